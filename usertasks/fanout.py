"""Fan-out: one user task starting many child tasks, shown to the user as one task.

The task that calls :meth:`TaskContext.fan_out() <usertasks.context.TaskContext.fan_out>`
becomes a *container*: its row holds aggregate counters (``children_total``,
``children_succeeded``, ``children_failed``, ``children_canceled``, ``children_skipped``,
``children_retried``) and aggregate steps (one step per child that ended).  Pipelines
(:mod:`usertasks.pipelines`) are containers too and share the bookkeeping below.

How the container ends, exactly once:

* When the container's body returns, the tracking middleware does not end it: it swaps the
  run's ``worker`` token for :data:`WAITING` (the body is done, the children are not).
* A child's end costs O(1): in the writer transaction that stores the child's final state, one
  ``UPDATE ... RETURNING`` adds 1 to a counter of the parent (and to its ``completed_steps``)
  and reads the parent back (the children that end in one writer batch are summed into one
  such UPDATE per container).  When the counters reach ``children_total`` and the body is done, a
  conditional UPDATE moves the parent from In Progress to its final state.  The row lock taken
  by the counter UPDATE orders concurrent ends, and the conditional UPDATE can succeed in one
  transaction only: the transaction that wins it, and no other, enqueues the completion
  callback (on commit).
* The body's own end does the same check, so children that all finished before the body
  returned still end the container.

Any code that moves a child row to a final state outside the tracking middleware (cancel,
reaper, broker failure) calls :func:`children_ended` in the same transaction.
"""

import logging
import threading

from django.db import router, transaction
from django.db.models import F
from django.utils import timezone

from . import bulk
from .text import clip
from .exceptions import Aborted, UserTasksError
from .protocol import (
    ALLOW_FAILURES,
    CALLBACK_DUE,
    CHILD_OPTION,
    CONTAINER_OPTION,
    FAIL_FAST,
    PARENT_OPTION,
    POLICIES,
    STATUS_OPTION,
    WAITING,
)
from .states import ACTIVE_STATES, State

logger = logging.getLogger("usertasks.fanout")

__all__ = [
    "ALLOW_FAILURES",
    "CHILD_OPTION",
    "FAIL_FAST",
    "PARENT_OPTION",
    "WAITING",
    "cancel_children",
    "children_ended",
    "fan_out",
]

_COUNTERS = ("children_succeeded", "children_failed", "children_canceled", "children_skipped")
_COUNTER_FOR = {
    State.SUCCEEDED: "children_succeeded",
    State.FAILED: "children_failed",
    State.CANCELED: "children_canceled",
}


def _done():
    return F("children_succeeded") + F("children_failed") + F("children_canceled") + F("children_skipped")


def _db():
    from .models import UserTaskStatus

    return router.db_for_write(UserTaskStatus)


def _rows(using=None):
    from .models import UserTaskStatus

    return UserTaskStatus.objects.using(using or _db())


# -- starting children -----------------------------------------------------------------------


def _split(item):
    if isinstance(item, dict):
        return (), dict(item)
    if isinstance(item, (tuple, list)):
        return tuple(item), {}
    raise TypeError(f"fan_out() items are tuples of positional arguments or dicts of keyword arguments, not {item!r}")


def callback_spec(on_complete):
    """``on_complete`` as stored in the container's options (JSON), or ``None``.

    A :class:`dramatiq.Message` (``actor.message(...)``) is sent as it is; an actor is sent with
    one argument, the container's UUID (a string)."""
    import dramatiq

    if on_complete is None:
        return None
    if isinstance(on_complete, dramatiq.Message):
        return {
            "actor": on_complete.actor_name, "queue": on_complete.queue_name,
            "args": list(on_complete.args), "kwargs": dict(on_complete.kwargs),
            "options": dict(on_complete.options),
        }
    if isinstance(on_complete, dramatiq.Actor):
        return {"actor": on_complete.actor_name, "queue": on_complete.queue_name, "args": None, "kwargs": {}, "options": {}}
    raise TypeError("on_complete takes an actor or a message (actor.message(...))")


def fan_out(ctx, child_actor, items, *, policy=ALLOW_FAILURES, on_complete=None):
    """Implementation of :meth:`TaskContext.fan_out`; returns the children as a QuerySet.

    Every item is checked (and its message built) before anything is written.  The children
    are then written in chunks, each committed and sent before the next one is written, so the
    workers start on the first children while the rest are still being written.  The
    container's options record the call (``fanout.calls``: how many children each call
    announced; ``fanout.closed``: how many calls have written all of theirs), so a retry of a
    body interrupted half-way writes only the children that are missing."""
    import dramatiq

    from .actors import UserTaskActor
    from .sending import prepare_many

    if not ctx.tracked:
        raise UserTasksError("fan_out() needs a tracked task: send the parent with send_for(user, ...)")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
    if not isinstance(child_actor, UserTaskActor):
        raise TypeError("fan_out() starts user tasks: decorate the child actor with @user_task")
    callback = callback_spec(on_complete)
    if callback is not None:
        dramatiq.get_encoder().encode(callback)  # fail now, not when the last child ends
    calls = [_split(item) for item in items]
    start = getattr(ctx, "start_op", None)
    if start is not None and not start.done.is_set():
        # A run's start may be held back (short tasks have it written with their end); a
        # container's must be stored before its children exist, so it shows In Progress.
        start.wait(30)
    ctx.check_abort()

    # From here on this run writes no progress of its own: the steps are the children's.
    index = ctx.fanout_calls
    ctx.fanout_calls = index + 1
    ctx.fanout = True

    db = _db()
    rows = _rows(db)
    parent = rows.select_related("user").get(pk=ctx.status_id)
    spec = parent.options.get("fanout") or {}
    announced = list(spec.get("calls") or [])
    if index < spec.get("closed", len(announced)):
        # A retry of a task that already fanned out: its children exist and were sent.
        logger.info("usertasks: task %s already started its children; not starting them again", parent.pk)
        # This run's start wrote its own (zero) progress: put the children's back.
        rows.filter(pk=parent.pk).update(completed_steps=_done(), total_steps=F("children_total"))
        return rows.filter(parent_id=parent.pk)

    prepared = prepare_many(
        child_actor, parent.user, calls, parent=parent, options={PARENT_OPTION: parent.pk, CHILD_OPTION: 1}
    )
    row_options = dict(prepared[0].row_options, child=True, notify=False) if prepared else {}
    for p in prepared:
        p.unique_key = None  # the container is the unit of dedupe
        p.row_options = row_options
    n = len(prepared)
    written = 0
    if index < len(announced):
        # A retry of a body interrupted while it wrote its children: skip those written.
        written = rows.filter(parent_id=parent.pk).count() - _written_before(spec, index)
        written = max(0, min(written, n))
        logger.info("usertasks: task %s resumes starting its children after %d of %d", parent.pk, written, n)
    _announce(rows, parent.pk, index, n, written, policy, callback, ctx.attempt)
    sizes = _chunk_sizes()
    while written < n:
        halted = _halted(rows, parent.pk, policy)
        if halted:
            _stop_writing(rows, parent.pk, index, n - written, halted)
            if halted == "canceled":
                raise Aborted()
            break
        end = min(n, written + next(sizes))
        _write_chunk(rows, parent.pk, child_actor.broker, prepared[written:end], index if end == n else None)
        written = end
    return rows.filter(parent_id=parent.pk)


def _chunk_sizes():
    """Children per transaction: small first (the workers start at once), then doubling up to
    ``FANOUT_BATCH_SIZE``."""
    from .conf import app_settings

    batch = max(1, int(app_settings.FANOUT_BATCH_SIZE))
    size = min(batch, 100)
    while True:
        yield size
        size = min(batch, size * 2)


def _update_spec(rows, parent_id, change, **fields):
    """In the current transaction: lock the container's row (an UPDATE of ``fields``), then
    rewrite its ``options["fanout"]`` with ``change(spec)``, which may return more fields to
    update with it.  Returns the row's ``cancel_requested``."""
    rows.filter(pk=parent_id).update(**fields)
    options, cancel_requested = rows.filter(pk=parent_id).values_list("options", "cancel_requested").get()
    spec = dict(options.get("fanout") or {})
    more = change(spec) or {}
    options["fanout"] = spec
    rows.filter(pk=parent_id).update(options=options, **more)
    return cancel_requested


def _written_before(spec, index):
    """How many children the calls before ``index`` wrote (a call stopped by a cancel or a
    fail-fast failure wrote fewer than it announced)."""
    unwritten = spec.get("unwritten") or {}
    calls = spec.get("calls") or []
    return sum(calls[:index]) - sum(unwritten.get(str(i), 0) for i in range(index))


def _announce(rows, parent_id, index, n, written, policy, callback, attempt):
    """Record call ``index`` (``n`` children, ``written`` of them already written by an earlier
    run) on the container, in its own transaction: the totals first, so the container cannot
    end before every child of the call has been written and has ended."""
    from .models import EventKind, UserTaskEvent

    now = timezone.now()
    first = []

    def change(spec):
        calls = list(spec.get("calls") or [])
        if index < len(calls):
            added = n - calls[index]  # a retry announces the same call again
            calls[index] = n
        else:
            added = n
            calls.append(n)
            first.append(True)
        spec.update(policy=policy, calls=calls, closed=index + 1 if written >= n else index)
        if callback is not None:
            spec["on_complete"] = callback
        # total_steps first: MySQL reads the columns of a SET clause as already updated to its
        # left, PostgreSQL and SQLite as they were before the UPDATE.
        return {"total_steps": F("children_total") + added, "children_total": F("children_total") + added}

    with transaction.atomic(using=rows.db):
        cancel_requested = _update_spec(
            rows, parent_id, change, is_container=True, completed_steps=_done(), modified=now, heartbeat=now
        )
        if cancel_requested is not None:
            raise Aborted()  # canceled before its children were started: start none
        if first:
            UserTaskEvent.objects.using(rows.db).create(
                status_id=parent_id, kind=EventKind.NOTE, attempt=attempt, created=now,
                detail=f"Started {n} subtask{'s' if n != 1 else ''} ({policy.replace('_', '-')}).",
            )


def _write_chunk(rows, parent_id, broker, prepared, closes):
    """Write the rows of ``prepared`` in one transaction and send their messages once it has
    committed.  ``closes``: the index of the call this chunk completes, if it is the last one."""
    from .sending import _rows

    db = rows.db
    now = timezone.now()
    with transaction.atomic(using=db):
        created = bulk.insert(_rows(prepared, now), db)
        if any(r.pk is None for r in created):  # backends without RETURNING
            ids = dict(rows.filter(task_id__in=[r.task_id for r in created]).values_list("task_id", "pk"))
            for r in created:
                r.pk = r.id = ids[r.task_id]
        if closes is not None:
            _update_spec(rows, parent_id, lambda spec: spec.update(closed=closes + 1), modified=now)
        pairs = [(p.message, r.pk) for p, r in zip(prepared, created)]
        transaction.on_commit(lambda: enqueue_children(broker, parent_id, pairs, db), using=db)


def _halted(rows, parent_id, policy):
    """Between two chunks: ``"canceled"`` if the container was canceled (or has ended),
    ``"failed"`` if a child failed under fail-fast, else ``None``."""
    state, cancel_requested, failed = rows.filter(pk=parent_id).values_list(
        "state", "cancel_requested", "children_failed"
    ).get()
    if cancel_requested is not None or state not in ACTIVE_STATES:
        return "canceled"
    if policy == FAIL_FAST and failed:
        return "failed"
    return None


def _stop_writing(rows, parent_id, index, missing, why):
    """The container was canceled, or a child failed under fail-fast, while its children were
    being written: the ``missing`` ones are never written and count as canceled, and the
    children written since the cancel (or the failure) are canceled too."""
    from .models import EventKind, UserTaskEvent

    now = timezone.now()
    reason = "The task was canceled." if why == "canceled" else "A subtask failed; the others were canceled."
    with transaction.atomic(using=rows.db):
        def change(spec):
            spec["closed"] = index + 1
            spec["unwritten"] = dict(spec.get("unwritten") or {}, **{str(index): missing})

        _update_spec(
            rows, parent_id, change, modified=now,
            children_canceled=F("children_canceled") + missing, completed_steps=F("completed_steps") + missing,
        )
        UserTaskEvent.objects.using(rows.db).create(
            status_id=parent_id, kind=EventKind.NOTE, created=now,
            detail=f"{reason} {missing:,} subtasks not yet written were not started.",
        )
        _cancel_pending(rows, parent_id, reason=reason, now=now)


def enqueue_children(broker, parent_id, pairs, db=None):
    """Send the messages of committed child rows.  A broker failure fails the children not
    sent (counted on the parent) and is logged; the parent carries on with the others."""
    from .broker import EnqueueFailed, enqueue_many
    from .models import EventKind, UserTaskEvent
    from .sending import fail_unsent

    try:
        enqueue_many(broker, [(message, None, {STATUS_OPTION: pk}) for message, pk in pairs])
    except EnqueueFailed as failure:
        exc = failure.error
        failed = [k for _, k in pairs[failure.sent:]]
        logger.error("usertasks: could not enqueue %d subtask(s) of task %s: %s", len(failed), parent_id, exc)
        now = timezone.now()
        rows = _rows(db)
        with transaction.atomic(using=db or _db()):
            n, text = fail_unsent(rows.db, failed, exc, now)
            UserTaskEvent.objects.using(db or _db()).create(
                status_id=parent_id, kind=EventKind.NOTE, created=now,
                detail=f"{n} subtask(s) could not be queued: {text}",
            )
            if n:
                children_ended(rows, parent_id, failed=n)


# -- children ending -------------------------------------------------------------------------


_batch = threading.local()


def begin_batch():
    """Writer: a transaction starts; child ends are summed per container until
    :func:`end_batch`."""
    _batch.counts = {}


def end_batch(rows):
    """Writer: the last statements of the transaction: one counter UPDATE per container that had
    children end in it (in primary-key order, so two writers never wait on each other in a
    cycle), taken as late as possible so the container's row lock is held briefly."""
    counts, _batch.counts = getattr(_batch, "counts", None), None
    for parent_id in sorted(counts or ()):
        entry = counts[parent_id]
        child_id = entry.pop("child_id")
        children_ended(rows, parent_id, child_id=child_id, **entry)


def child_ended(rows, parent_id, child_id, state):
    """Child ``child_id`` of ``parent_id`` ended in ``state`` (a final state, or Retrying).  Call
    it in the transaction that stored that state; in the writer's transaction the counts are
    summed and applied once per container by :func:`end_batch`."""
    if state == State.RETRYING:
        key = "retried"
    else:
        counter = _COUNTER_FOR.get(state)
        if counter is None:
            return
        key = counter[len("children_"):]
    counts = getattr(_batch, "counts", None)
    if counts is None:
        children_ended(rows, parent_id, child_id=child_id, **{key: 1})
        return
    entry = counts.setdefault(
        parent_id, {"succeeded": 0, "failed": 0, "canceled": 0, "skipped": 0, "retried": 0, "child_id": None}
    )
    entry[key] += 1
    if key != "retried":
        entry["child_id"] = child_id


def children_ended(rows, parent_id, *, succeeded=0, failed=0, canceled=0, skipped=0, retried=0, child_id=None):
    """Count children of ``parent_id`` that reached a final state, and end the parent if they
    were the last.  Call it in the transaction that stored the children's final states.

    ``rows`` is a ``UserTaskStatus`` manager or queryset (``.using(db)``) or a database alias.
    Costs one ``UPDATE ... RETURNING`` (plus, for the last child, the final UPDATE)."""
    if isinstance(rows, str) or rows is None:
        rows = _rows(rows)
    rows = rows.model.objects.using(rows.db)
    counts = {"succeeded": succeeded, "failed": failed, "canceled": canceled, "skipped": skipped}
    ended = sum(counts.values())
    if not ended and not retried:
        return False
    now = timezone.now()
    info = _count(rows, parent_id, counts, retried, now)
    if not ended or info is None or info["state"] not in ACTIVE_STATES:
        return False
    options = info["options"] or {}
    if "pipeline" in options:
        from .pipelines import after_stage

        after_stage(rows, info, child_id, succeeded=bool(succeeded), stopped=bool(failed or canceled))
        info = _info(rows, parent_id)
    elif failed and (options.get("fanout") or {}).get("policy") == FAIL_FAST:
        if _cancel_pending(rows, parent_id, reason="A subtask failed; the others were canceled.", now=now):
            info = _info(rows, parent_id)
    return try_complete(rows, info)


_INFO = ("pk", "parent_id", "state", "worker", "children_total", "cancel_requested", "options", *_COUNTERS)


def _info(rows, parent_id):
    return rows.filter(pk=parent_id).values(*_INFO).first()


def _count(rows, parent_id, counts, retried, now):
    """Add ``counts`` (ended children by outcome) and ``retried`` to the counters of container
    ``parent_id`` (its steps grow by the children that ended) and return the row as
    :func:`_info` reads it, or ``None`` if there is no such row.  One ``UPDATE ... RETURNING``
    where the database has it, of the same text whatever the counts (a prepared statement on
    PostgreSQL); an UPDATE and a SELECT elsewhere."""
    from django.db import connections

    connection = connections[rows.db]
    ended = sum(counts.values())
    if not bulk.supported(connection):
        update = {f"children_{k}": F(f"children_{k}") + v for k, v in counts.items() if v}
        if retried:
            update["children_retried"] = F("children_retried") + retried
        if ended:
            update["completed_steps"] = F("completed_steps") + ended
        if not rows.filter(pk=parent_id).update(modified=now, heartbeat=now, **update):
            return None
        return _info(rows, parent_id) if ended else None
    when = connection.ops.adapt_datetimefield_value(now)
    params = [*(counts[c[len("children_"):]] for c in _COUNTERS), retried, ended, when, when, parent_id]
    found = bulk.execute(connection, _count_sql(connection), params)
    if not found:
        return None
    info = dict(zip(_INFO, found[0]))
    if not isinstance(info["options"], dict):  # JSON text, as Django's backends read it
        info["options"] = rows.model._meta.get_field("options").from_db_value(info["options"], None, connection)
    return info


_count_sql_by_vendor = {}


def _count_sql(connection):
    sql = _count_sql_by_vendor.get(connection.vendor)
    if sql is None:
        sql = _count_sql_by_vendor[connection.vendor] = _build_count_sql(connection)
    return sql


def _build_count_sql(connection):
    from .models import UserTaskStatus

    qn = connection.ops.quote_name
    column = {f.attname: qn(f.column) for f in UserTaskStatus._meta.concrete_fields}
    column["pk"] = column["id"]
    adds = [f"{column[c]} = {column[c]} + %s" for c in (*_COUNTERS, "children_retried", "completed_steps")]
    sets = ", ".join([*adds, f"{column['modified']} = %s", f"{column['heartbeat']} = %s"])
    table = qn(UserTaskStatus._meta.db_table)
    returning = ", ".join(column[name] for name in _INFO)
    return f"UPDATE {table} SET {sets} WHERE {column['id']} = %s RETURNING {returning}"


def try_complete(rows, info):
    """End the container described by ``info`` if its body is done and every child has ended.
    Returns ``True`` in the one transaction that ends it."""
    from .models import EventKind, UserTaskEvent

    if info is None or info["state"] != State.IN_PROGRESS or info["worker"] != WAITING:
        return False
    done = sum(info[c] for c in _COUNTERS)
    total = info["children_total"]
    if done < total:
        return False
    options = info["options"] or {}
    succeeded, failed = info["children_succeeded"], info["children_failed"]
    canceled, skipped = info["children_canceled"], info["children_skipped"]
    pipeline = "pipeline" in options
    policy = (options.get("fanout") or {}).get("policy", ALLOW_FAILURES)
    if info["cancel_requested"] is not None:
        state = State.CANCELED
    elif pipeline or policy == FAIL_FAST:
        state = State.SUCCEEDED if succeeded == total else State.FAILED if failed else State.CANCELED
    else:
        state = State.SUCCEEDED
    summary = summarize(total, succeeded, failed, canceled, skipped, pipeline=pipeline)
    now = timezone.now()
    fields = {"state": state, "finished": now, "modified": now, "unique_key": None, "worker": "", "message": summary}
    spec_key = "pipeline" if pipeline else "fanout"
    callback = (options.get(spec_key) or {}).get("on_complete")
    if callback:
        # The callback is due from this commit on; the mark goes once it is sent, and the
        # reaper sends the callbacks of containers still marked (a crash in between).
        fields["options"] = dict(options, **{spec_key: dict(options[spec_key], **{CALLBACK_DUE: True})})
    detail = summary
    if state == State.FAILED:
        first = (
            rows.filter(parent_id=info["pk"], state=State.FAILED)
            .order_by("finished", "pk").values("name", "error", "error_class").first()
        )
        what = "A stage failed" if pipeline else "A subtask failed"
        fields["error"] = clip(f"{what}: {first['name']}: {first['error']}" if first else f"{what}.", 4000)
        fields["error_class"] = (first or {}).get("error_class", "")[:255]
        detail = fields["error"]
    n = rows.filter(pk=info["pk"], state=State.IN_PROGRESS, worker=WAITING).update(**fields)
    if not n:
        return False
    kind = {State.SUCCEEDED: EventKind.SUCCEEDED, State.FAILED: EventKind.FAILED, State.CANCELED: EventKind.CANCELED}[state]
    UserTaskEvent.objects.using(rows.db).create(status_id=info["pk"], kind=kind, created=now, detail=clip(detail, 4000))
    pk, db = info["pk"], rows.db
    transaction.on_commit(lambda: _container_finished(pk, state, callback, db), using=db)
    if info.get("parent_id") is not None:
        # A container inside a container (a pipeline stage that fans out): count it there.
        child_ended(rows, info["parent_id"], pk, state)
    return True


def summarize(total, succeeded, failed=0, canceled=0, skipped=0, *, pipeline=False):
    """``"1,990 of 2,000 subtasks succeeded, 10 failed"``."""
    noun = "stage" if pipeline else "subtask"
    parts = [f"{succeeded:,} of {total:,} {noun}{'s' if total != 1 else ''} succeeded"]
    for count, word in ((failed, "failed"), (canceled, "canceled"), (skipped, "skipped")):
        if count:
            parts.append(f"{count:,} {word}")
    return ", ".join(parts)


def _container_finished(pk, state, callback, db):
    """After the commit that ended container ``pk``: send its callback, then ``task_finished``."""
    from .models import UserTaskStatus
    from .signals import emit_task_finished, task_finished

    if callback:
        send_callback(pk, callback, db)
    status = UserTaskStatus.objects.using(db).filter(pk=pk).first() if task_finished.receivers else None
    if status is not None:
        emit_task_finished(status, state)


def send_callback(pk, callback, db):
    """Send the completion callback of container ``pk``, then remove its :data:`CALLBACK_DUE`
    mark.  Returns whether it was sent (a failure is logged; the mark stays, so the reaper
    tries again)."""
    import dramatiq

    from .broker import enqueue_many
    from .models import UserTaskStatus

    rows = UserTaskStatus.objects.using(db)
    try:
        args = callback["args"]
        if args is None:
            args = [str(rows.values_list("uuid", flat=True).get(pk=pk))]
        message = dramatiq.Message(
            queue_name=callback["queue"], actor_name=callback["actor"], args=tuple(args),
            kwargs=callback["kwargs"], options=dict(callback["options"], **{CONTAINER_OPTION: pk}),
        )
        enqueue_many(dramatiq.get_broker(), [(message, None)])  # wakes idle consumers (usertasks.wakeup)
    except Exception:
        logger.exception("usertasks: could not send the completion callback of task %s", pk)
        return False
    try:
        with transaction.atomic(using=db):
            options = rows.select_for_update().filter(pk=pk).values_list("options", flat=True).first()
            if options is not None:
                for key in ("fanout", "pipeline"):
                    if isinstance(options.get(key), dict):
                        options[key].pop(CALLBACK_DUE, None)
                rows.filter(pk=pk).update(options=options)
    except Exception:
        logger.exception("usertasks: the completion callback of task %s was sent but is still marked due", pk)
    return True


def body_done(rows, op):
    """Writer op ``body_done``: the container's body returned; wait for the children (or end
    at once if they are all done already)."""
    ctx = op.ctx
    n = rows.filter(pk=ctx.status_id, state=State.IN_PROGRESS, worker=ctx.worker).update(
        worker=WAITING, modified=op.at, heartbeat=op.at
    )
    if not n:
        return False
    try_complete(rows, _info(rows, ctx.status_id))
    return True


def body_ended(rows, ctx, state):
    """Writer hook: the body of a container ended Failed or Canceled on its own (an exception
    after ``fan_out()``): the children that have not run yet never will."""
    if state in (State.FAILED, State.CANCELED):
        _cancel_pending(rows, ctx.status_id, reason="The task ended; its remaining subtasks were canceled.")


# -- canceling -------------------------------------------------------------------------------


def _cancel_pending(rows, parent_id, *, reason, by=None, now=None):
    """In the current transaction: cancel every child of ``parent_id`` that has not started
    (one UPDATE; pipelines: the stages that never ran are *skipped*), count them on the parent
    and ask the running ones to stop (on commit).  Returns how many were canceled or skipped."""
    from .models import EventKind, UserTaskEvent

    now = now or timezone.now()
    info = rows.filter(pk=parent_id).values("options").first()
    if info is None:
        return 0
    if "pipeline" in (info["options"] or {}):
        from .pipelines import stop_stages

        return stop_stages(rows, parent_id, reason=reason, by=by, now=now)
    fields = dict(state=State.CANCELED, cancel_requested=now, finished=now, modified=now, unique_key=None)
    if by is not None:
        fields["canceled_by"] = by
    pending = rows.filter(parent_id=parent_id, state__in=(State.PENDING, State.RETRYING))
    claimed = _claimed(pending)
    if claimed:  # a worker has just taken them: they are running, whatever the row says yet
        pending = pending.exclude(pk__in=claimed)
    n = pending.update(**fields)
    running = list(rows.filter(parent_id=parent_id, state=State.IN_PROGRESS).values_list("pk", flat=True))
    running += sorted(claimed)
    if running:
        rows.filter(pk__in=running, cancel_requested__isnull=True).update(cancel_requested=now)
        transaction.on_commit(lambda: request_abort(running, rows.db), using=rows.db)
    if n:
        UserTaskEvent.objects.using(rows.db).create(
            status_id=parent_id, kind=EventKind.NOTE, created=now, actor=by,
            detail=f"{reason} {n:,} not yet started were canceled" + (f"; {len(running)} running asked to stop." if running else "."),
        )
        counted = rows.filter(pk=parent_id).update(
            children_canceled=F("children_canceled") + n, completed_steps=F("completed_steps") + n,
            modified=now,
        )
        if not counted:
            return 0
    return n


def _claimed(pending):
    """Raise the abort flags of the children in ``pending`` and return those a worker has
    already claimed (atomic abort stores; see ``usertasks.abort.redis``).  Their bodies may be
    running although their rows still say Pending, so they must be asked to stop, not marked
    Canceled-before-start."""
    from .abort import get_backend

    try:
        backend = get_backend()
        if not backend.atomic_claims:
            return set()
        return backend.cancel_pending_many(list(pending.values_list("pk", flat=True)))
    except Exception as exc:
        logger.warning("usertasks: cannot raise the abort flags of pending subtasks (%s)", exc)
        return set()


def cancel_children(status, *, by=None, reason="The task was canceled."):
    """Cancel the children of container ``status`` that have not ended: the pending ones at
    once, in one UPDATE; the running ones stop at their next ``step()``.  The container ends
    (Canceled) when its last running child has stopped.  Returns how many were canceled at once."""
    db = router.db_for_write(type(status))
    rows = _rows(db)
    now = timezone.now()
    with transaction.atomic(using=db):
        mark = {"cancel_requested": now}
        if by is not None:
            mark["canceled_by"] = by
        rows.filter(pk=status.pk, cancel_requested__isnull=True).update(**mark)
        n = _cancel_pending(rows, status.pk, reason=reason, by=by, now=now)
        try_complete(rows, _info(rows, status.pk))
    return n


def request_abort(ids, db=None):
    """Raise the abort flags of the running tasks ``ids`` (they stop at their next ``step()``)."""
    from .abort import set_flag

    for pk in ids:
        try:
            set_flag(pk)
        except Exception as exc:
            logger.warning("usertasks: could not ask running subtask %s to stop: %s", pk, exc)
