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

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import dramatiq
from django.db import router, transaction
from django.utils import timezone

from .. import transitions
from ..actors import UserTaskActor
from ..models import EventKind, UserTaskEvent, UserTaskStatus
from ..protocol import PARENT_OPTION, PIPELINE_CLASS, WAITING
from ..sending import check_user, new_row, prepare
from ..states import State
from ..text import clip
from .completion import callback_spec

__all__ = ["pipeline"]


def pipeline(
    user: Any,
    stages: Iterable[dramatiq.Message],
    *,
    name: str | None = None,
    on_complete: Any = None,
    notify: bool | None = None,
) -> UserTaskStatus:
    """Run ``stages`` one after the other for ``user``; returns the container's
    :class:`~usertasks.models.UserTaskStatus`.

    ``stages`` are messages of user tasks (``actor.message(*args, **kwargs)``: the arguments
    without the task context; ``actor.message_with_options(args=..., kwargs=..., max_retries=...)``
    for Dramatiq options).  Like ``send_for()``, the rows are written in the caller's transaction
    and the first stage is sent when it commits.  ``on_complete`` (an actor, or a message) is sent
    once when the pipeline ends, whatever the outcome; ``notify`` overrides the email setting of
    the container (stages never email)."""
    check_user(user)
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
    prepared = [prepare(actor, user, m.args, m.kwargs, options=dict(m.options)) for actor, m in zip(actors, stages)]
    n = len(prepared)
    if name is None:
        name = " \u2192 ".join(p.name for p in prepared)
    spec: dict[str, Any] = {"stages": n}
    options: dict[str, Any] = {"pipeline": spec}
    if callback is not None:
        dramatiq.get_encoder().encode(callback)
        spec["on_complete"] = callback
    if notify is not None:
        options["notify"] = bool(notify)

    db = router.db_for_write(UserTaskStatus)
    now = timezone.now()
    with transaction.atomic(using=db):
        container = UserTaskStatus(
            user=user,
            task_id=f"pipeline-{uuid.uuid4()}",
            task_class=PIPELINE_CLASS,
            name=clip(name, 255),
            state=State.IN_PROGRESS,
            is_container=True,
            worker=WAITING,
            children_total=n,
            total_steps=n,
            created=now,
            modified=now,
            started=now,
            heartbeat=now,
            options=options,
        )
        container.save(force_insert=True, using=db)
        rows = []
        for i, p in enumerate(prepared):
            p.parent = container
            p.unique_key = None
            p.message = p.message.copy(options={PARENT_OPTION: container.pk})
            row = new_row(p, now)
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
        transaction.on_commit(lambda: transitions.enqueue_children(broker, container.pk, first, db), using=db)
    return container


def _encodable(message: dramatiq.Message) -> dict[str, Any]:
    d = message.asdict()
    return {
        k: d[k] for k in ("queue_name", "actor_name", "args", "kwargs", "options", "message_id", "message_timestamp")
    }
