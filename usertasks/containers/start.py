"""``task.fan_out(child_actor, items)``: one user task starting many child tasks.

Every item is checked (and its message built) before anything is written.  The children are
then written in chunks, each committed and sent before the next one is written, so the workers
start on the first children while the rest are still being written.  The container's options
record each call (``fanout.calls``: how many children each call announced; ``fanout.closed``:
how many calls have written all of theirs), so a retry of a body interrupted half-way writes
only the children that are missing.  How the container then ends is ``counting`` and
``completion``'s part (see :mod:`usertasks.containers`).
"""

import logging

import dramatiq
from django.db import router, transaction
from django.db.models import F
from django.utils import timezone

from .. import sql, transitions
from ..conf import app_settings
from ..exceptions import Aborted, UserTasksError
from ..models import EventKind, UserTaskEvent, UserTaskStatus
from ..protocol import ALLOW_FAILURES, CHILD_OPTION, FAIL_FAST, PARENT_OPTION, POLICIES
from ..sending import new_rows, prepare_many
from ..states import ACTIVE_STATES
from .completion import callback_spec
from .counting import done, recount

logger = logging.getLogger("usertasks.containers")

__all__ = ["fan_out"]


def _rows():
    return UserTaskStatus.objects.using(router.db_for_write(UserTaskStatus))


# -- starting children -----------------------------------------------------------------------


def _split(item):
    if isinstance(item, dict):
        return (), dict(item)
    if isinstance(item, (tuple, list)):
        return tuple(item), {}
    raise TypeError(f"fan_out() items are tuples of positional arguments or dicts of keyword arguments, not {item!r}")


def fan_out(ctx, child_actor, items, *, policy=ALLOW_FAILURES, on_complete=None):
    """Implementation of :meth:`TaskContext.fan_out` (see the module's docstring); returns the
    children as a QuerySet."""
    if not ctx.tracked:
        raise UserTasksError("fan_out() needs a tracked task: send the parent with send_for(user, ...)")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
    if not isinstance(child_actor, dramatiq.Actor) or getattr(child_actor, "usertask_options", None) is None:
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

    rows = _rows()
    parent = rows.select_related("user").get(pk=ctx.status_id)
    spec = parent.options.get("fanout") or {}
    announced = list(spec.get("calls") or [])
    if index < spec.get("closed", len(announced)):
        # A retry of a task that already fanned out: its children exist and were sent.
        logger.info("usertasks: task %s already started its children; not starting them again", parent.pk)
        # This run's start wrote its own (zero) progress: put the children's back.
        steps = recount(rows, parent.pk)
        if steps is not None:
            rows.filter(pk=parent.pk).update(completed_steps=steps[0], total_steps=steps[1])
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
    if index < len(announced):
        # This run's start wrote its own (zero) progress over the children's: put theirs back.
        steps = recount(rows, parent.pk)
        if steps is not None:
            rows.filter(pk=parent.pk).update(completed_steps=steps[0], total_steps=steps[1])
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
        if index == 0 and first:
            # The first call: the container's steps become its children's (the body's own
            # progress so far is dropped).  total_steps first: MySQL reads the columns of a SET
            # clause as already updated to its left, PostgreSQL and SQLite as they were before.
            return {
                "total_steps": F("children_total") + added,
                "children_total": F("children_total") + added,
                "completed_steps": done(),
            }
        # Later calls add to the steps their running children have reported meanwhile.
        return {"total_steps": F("total_steps") + added, "children_total": F("children_total") + added}

    with transaction.atomic(using=rows.db):
        cancel_requested = _update_spec(rows, parent_id, change, is_container=True, modified=now, heartbeat=now)
        if cancel_requested is not None:
            raise Aborted()  # canceled before its children were started: start none
        if first:
            UserTaskEvent.objects.using(rows.db).create(
                status_id=parent_id,
                kind=EventKind.NOTE,
                attempt=attempt,
                created=now,
                detail=f"Started {n} subtask{'s' if n != 1 else ''} ({policy.replace('_', '-')}).",
            )


def _write_chunk(rows, parent_id, broker, prepared, closes):
    """Write the rows of ``prepared`` in one transaction and send their messages once it has
    committed.  ``closes``: the index of the call this chunk completes, if it is the last one."""
    db = rows.db
    now = timezone.now()
    with transaction.atomic(using=db):
        created = sql.insert(new_rows(prepared, now), db)
        if any(r.pk is None for r in created):  # backends without RETURNING
            ids = dict(rows.filter(task_id__in=[r.task_id for r in created]).values_list("task_id", "pk"))
            for r in created:
                r.pk = r.id = ids[r.task_id]
        if closes is not None:
            _update_spec(rows, parent_id, lambda spec: spec.update(closed=closes + 1), modified=now)
        pairs = [(p.message, r.pk) for p, r in zip(prepared, created)]
        transaction.on_commit(lambda: transitions.enqueue_children(broker, parent_id, pairs, db), using=db)


def _halted(rows, parent_id, policy):
    """Between two chunks: ``"canceled"`` if the container was canceled (or has ended),
    ``"failed"`` if a child failed under fail-fast, else ``None``."""
    state, cancel_requested, failed = (
        rows.filter(pk=parent_id).values_list("state", "cancel_requested", "children_failed").get()
    )
    if cancel_requested is not None or state not in ACTIVE_STATES:
        return "canceled"
    if policy == FAIL_FAST and failed:
        return "failed"
    return None


def _stop_writing(rows, parent_id, index, missing, why):
    """The container was canceled, or a child failed under fail-fast, while its children were
    being written: the ``missing`` ones are never written and count as canceled, and the
    children written since the cancel (or the failure) are canceled too."""
    now = timezone.now()
    reason = "The task was canceled." if why == "canceled" else "A subtask failed; the others were canceled."
    with transaction.atomic(using=rows.db):

        def change(spec):
            spec["closed"] = index + 1
            spec["unwritten"] = dict(spec.get("unwritten") or {}, **{str(index): missing})

        _update_spec(
            rows,
            parent_id,
            change,
            modified=now,
            children_canceled=F("children_canceled") + missing,
            completed_steps=F("completed_steps") + missing,
        )
        UserTaskEvent.objects.using(rows.db).create(
            status_id=parent_id,
            kind=EventKind.NOTE,
            created=now,
            detail=f"{reason} {missing:,} subtasks not yet written were not started.",
        )
        transitions.cancel_pending_children(rows, parent_id, reason=reason, now=now)
