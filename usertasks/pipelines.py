"""Pipelines: user tasks run one after the other, shown to the user as one task.

::

    from usertasks import pipeline

    status = pipeline(request.user, [
        export_course.message(course_key),
        upload_export.message(course_key, destination="s3"),
        notify_team.message(course_key),
    ], name="Publish {course_key}".format(course_key=course_key))
    return redirect(status)

The returned row is a *container* (like a fan-out's): its progress counts the stages that
ended, and its counters say how many succeeded, failed, were canceled or skipped.  Every stage
has its own row (a child of the container, hidden from the dashboard), created up front so the
status page can list what is still to come.  A stage is sent when the one before it succeeded;
a failure or a cancel stops the sequence, and the stages that will never run are marked
Canceled with a "skipped" event (none stays Pending).  See ``docs/pipelines.md``.
"""

import uuid

import dramatiq
from django.db import router, transaction
from django.db.models import F
from django.utils import timezone

from .text import clip
from .fanout import callback_spec, enqueue_children, request_abort
from .protocol import PARENT_OPTION, PIPELINE_CLASS, WAITING
from .states import State

__all__ = ["pipeline"]


def pipeline(user, stages, *, name=None, on_complete=None, notify=None):
    """Run ``stages`` one after the other for ``user``; returns the container's
    :class:`~usertasks.models.UserTaskStatus`.

    ``stages`` are messages of user tasks (``actor.message(*args, **kwargs)``: the arguments
    without the task context; ``actor.message_with_options(args=..., kwargs=..., max_retries=...)``
    for Dramatiq options).  Like ``send_for()``, the rows are written in the caller's transaction
    and the first stage is sent when it commits.  ``on_complete`` (an actor, or a message) is sent
    once when the pipeline ends, whatever the outcome; ``notify`` overrides the email setting of
    the container (stages never email)."""
    from .actors import UserTaskActor
    from .models import EventKind, UserTaskEvent, UserTaskStatus
    from .sending import _check_user, _row, prepare

    _check_user(user)
    stages = list(stages)
    if not stages:
        raise ValueError("pipeline() needs at least one stage")
    actors = []
    for message in stages:
        if not isinstance(message, dramatiq.Message):
            raise TypeError(f"pipeline() stages are messages (actor.message(...)), not {message!r}")
        actor = dramatiq.get_broker().get_actor(message.actor_name)
        if not isinstance(actor, UserTaskActor):
            raise TypeError(f"pipeline() stages are user tasks; {message.actor_name} is not a @user_task")
        actors.append(actor)
    callback = callback_spec(on_complete)
    # Check every stage's arguments and name now, before anything is written.
    prepared = [
        prepare(actor, user, m.args, m.kwargs, options=dict(m.options))
        for actor, m in zip(actors, stages)
    ]
    n = len(prepared)
    if name is None:
        name = " \u2192 ".join(p.name for p in prepared)
    options = {"pipeline": {"stages": n}}
    if callback is not None:
        dramatiq.get_encoder().encode(callback)
        options["pipeline"]["on_complete"] = callback
    if notify is not None:
        options["notify"] = bool(notify)

    db = router.db_for_write(UserTaskStatus)
    now = timezone.now()
    with transaction.atomic(using=db):
        container = UserTaskStatus(
            user=user, task_id=f"pipeline-{uuid.uuid4()}", task_class=PIPELINE_CLASS, name=clip(name, 255),
            state=State.IN_PROGRESS, is_container=True, worker=WAITING, children_total=n, total_steps=n,
            created=now, modified=now, started=now, heartbeat=now, options=options,
        )
        container.save(force_insert=True, using=db)
        rows = []
        for i, p in enumerate(prepared):
            p.parent = container
            p.unique_key = None
            p.message = p.message.copy(options={PARENT_OPTION: container.pk})
            row = _row(p, now)
            row.options = dict(p.row_options, child=True, notify=False, stage=i)
            if i:
                row.options.update(waiting=True, message=_encodable(p.message))
            row.save(force_insert=True, using=db)
            rows.append(row)
        UserTaskEvent.objects.using(db).bulk_create(
            [UserTaskEvent(status=container, kind=EventKind.ENQUEUED, created=now, detail=f"{n} stage(s)")]
            + [UserTaskEvent(status=r, kind=EventKind.ENQUEUED, created=now) for r in rows[:1]]
        )
        first = [(prepared[0].message, rows[0].pk)]
        broker = actors[0].broker
        transaction.on_commit(lambda: enqueue_children(broker, container.pk, first, db), using=db)
    return container


def _encodable(message):
    d = message.asdict()
    return {k: d[k] for k in ("queue_name", "actor_name", "args", "kwargs", "options", "message_id", "message_timestamp")}


def after_stage(rows, info, child_id, *, succeeded, stopped):
    """Hook of :func:`usertasks.fanout.children_ended` for pipelines (in the writer's
    transaction): send the next stage, or stop the sequence."""
    from .models import EventKind, UserTaskEvent

    parent_id = info["pk"]
    if stopped or info["cancel_requested"] is not None:
        stop_stages(rows, parent_id, reason="An earlier stage did not succeed.")
        return
    if not succeeded or child_id is None:
        return
    nxt = rows.filter(parent_id=parent_id, pk__gt=child_id).order_by("pk").values("pk", "state", "options").first()
    if nxt is None or nxt["state"] != State.PENDING or not nxt["options"].get("waiting"):
        return
    options = dict(nxt["options"])
    data = options.pop("message")
    options.pop("waiting", None)
    now = timezone.now()
    if not rows.filter(pk=nxt["pk"], state=State.PENDING).update(options=options, modified=now, eta=now):
        return
    UserTaskEvent.objects.using(rows.db).create(status_id=nxt["pk"], kind=EventKind.ENQUEUED, created=now)
    message = dramatiq.Message(**data)
    pairs = [(message, nxt["pk"])]
    db = rows.db

    def send():
        broker = dramatiq.get_broker()
        enqueue_children(broker, parent_id, pairs, db)

    transaction.on_commit(send, using=db)


def stop_stages(rows, parent_id, *, reason, by=None, now=None):
    """In the current transaction: the stages that never ran are skipped (Canceled, with a
    "skipped" event), a stage sent but not started is canceled, a running one is asked to stop.
    Counts them on the container; returns how many ended here."""
    from .models import EventKind, UserTaskEvent

    now = now or timezone.now()
    open_stages = list(
        rows.filter(parent_id=parent_id, state__in=(State.PENDING, State.RETRYING, State.IN_PROGRESS))
        .order_by("pk").values("pk", "state", "options")
    )
    skipped, canceled, running, events = 0, 0, [], []
    base = dict(state=State.CANCELED, finished=now, modified=now, unique_key=None)
    for stage in open_stages:
        if stage["state"] == State.IN_PROGRESS:
            rows.filter(pk=stage["pk"], cancel_requested__isnull=True).update(cancel_requested=now)
            running.append(stage["pk"])
            continue
        waiting = stage["state"] == State.PENDING and (stage["options"] or {}).get("waiting")
        fields = dict(base, cancel_requested=now)
        if by is not None:
            fields["canceled_by"] = by
        if not rows.filter(pk=stage["pk"], state=stage["state"]).update(**fields):
            continue
        if waiting:
            skipped += 1
            events.append(UserTaskEvent(status_id=stage["pk"], kind=EventKind.SKIPPED, created=now, detail=reason))
        else:
            canceled += 1
            events.append(UserTaskEvent(status_id=stage["pk"], kind=EventKind.CANCELED, created=now, actor=by))
    if events:
        UserTaskEvent.objects.using(rows.db).bulk_create(events)
    if skipped or canceled:
        rows.filter(pk=parent_id).update(
            children_skipped=F("children_skipped") + skipped, children_canceled=F("children_canceled") + canceled,
            completed_steps=F("completed_steps") + skipped + canceled, modified=now,
        )
    if running:
        transaction.on_commit(lambda: request_abort(running, rows.db), using=rows.db)
    return skipped + canceled
