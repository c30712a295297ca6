"""Every change of a task's state, and only here.

A task's ``state`` moves along :data:`usertasks.states.ALLOWED_FROM`: each change below is one
conditional UPDATE whose guard is the states it may leave (and, for a run, the run's own worker
token), written with its event in the same transaction.  A late, repeated or racing change
matches no row and is a no-op, so of two racing changes exactly one wins.  Nothing else in
usertasks, nor in its Celery compatibility layer, writes ``state``.

Two kinds of callers:

* **Runs**, through the per-process writer (``usertasks.writer``): the worker's middleware turns
  what happens to a run into a :class:`Change` (:func:`start`, :func:`end`, :func:`body_done`,
  :func:`cancel_before_start`, :func:`expire_before_start`) and the writer commits many of them
  together with :func:`apply`, one transaction (or, on PostgreSQL, one statement) per batch.
* **Everything else** calls a function that makes its change in the caller's transaction:
  cancels (:func:`cancel_not_started`, :func:`request_cancel`), the reaper (:func:`requeue_lost`,
  :func:`end_lost`), unsent messages (:func:`fail_unsent`), containers
  (:func:`children_ended`, :func:`complete_container`, :func:`cancel_children`,
  :func:`cancel_pending_children`) and the compatibility layer (:func:`begin`, :func:`finish`,
  :func:`retrying`, :func:`set_custom_state`).

A child that ends is counted on its container in the same transaction (:func:`children_ended`):
the container's rules (``usertasks.containers``) say what follows, and the container's own end
(:func:`complete_container`) happens in the transaction that counts its last child.  What must
wait for the commit (messages to send, abort flags to raise or clear, ``task_finished``) is
registered with ``transaction.on_commit`` here too.  The notifications of a top-level task that
ends are recorded in its outbox (``UserTaskNotification``) in the transaction that ends it.  ``docs/architecture.md`` lists every change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Any, TypeAlias

from django.db import connections, router, transaction
from django.db.models import F
from django.utils import timezone

from . import sql
from .abort import clear_flags, get_backend, set_flag
from .broker import EnqueueFailed, enqueue_many
from .conf import app_settings
from .containers import completion, counting
from .models import FROM_ROW, EventKind, UserTaskEvent, UserTaskNotification, UserTaskStatus, notify_states_for
from .protocol import CALLBACK_DUE, STATUS_OPTION, WAITING
from .signals import send_task_finished, test_case_commit_point
from .states import ACTIVE_STATES, ALLOWED_FROM, FINAL_STATES, NOT_RUNNING, STANDARD_STATES, State
from .text import clip

logger = logging.getLogger("usertasks.transitions")

__all__ = [
    "Change",
    "apply",
    "as_started",
    "begin",
    "body_done",
    "cancel_before_start",
    "cancel_children",
    "cancel_not_started",
    "cancel_pending_children",
    "children_ended",
    "clear_custom_state",
    "complete_container",
    "end",
    "end_lost",
    "enqueue_children",
    "expire_before_start",
    "fail_unsent",
    "finish",
    "refused",
    "request_cancel",
    "requeue_lost",
    "retrying",
    "set_custom_state",
    "start",
]

FINAL = frozenset(FINAL_STATES)

#: Status rows of one database (a manager or queryset of ``UserTaskStatus``).
Rows: TypeAlias = Any
#: A guarded UPDATE of the writer's: ``(fields to set, where)``.
Plan: TypeAlias = tuple[dict[str, Any], dict[str, Any]]


def _rows(using: str | None = None) -> Rows:
    return UserTaskStatus.objects.using(using or router.db_for_write(UserTaskStatus))


# =================================================================================================
# Changes of runs, committed in batches by the writer
# =================================================================================================


class Done:
    """A one-shot ``threading.Event`` (``set``, ``is_set``, ``wait``).

    Two are made per run (its start and its end); ``threading.Event`` builds a ``Condition`` in
    Python each time, this holds one lock, released by :meth:`set`."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._lock.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """``True`` once set; ``False`` if ``timeout`` seconds pass first."""
        if self._set:
            return True
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            return self._set
        self._lock.release()  # let the other waiters through
        return True


class Change:
    """One change for the writer; ``wait()`` blocks until it is committed (or refused) and says
    whether it took effect.  Made by the functions below, never by hand.

    ``lazy``: no thread waits for it (the acknowledgement of its message does), so the writer
    may hold it up to ``WRITE_LINGER`` seconds to commit more changes in the same transaction."""

    __slots__ = (
        "applied",
        "at",
        "ctx",
        "done",
        "error",
        "events",
        "fields",
        "kind",
        "lazy",
        "parent_id",
        "start",
        "where",
        "writer",
    )

    def __init__(
        self,
        kind: str,
        ctx: Any = None,
        *,
        fields: dict[str, Any] | None = None,
        where: dict[str, Any] | None = None,
        parent_id: int | None = None,
        events: Iterable[UserTaskEvent] = (),
        lazy: bool = False,
    ) -> None:
        self.kind = kind
        self.lazy = lazy
        self.ctx = ctx
        self.at = timezone.now()
        self.fields = fields or {}
        self.where = where
        self.parent_id = parent_id
        self.events = list(events)
        self.done = Done()
        self.applied = False
        self.error = None
        self.start = None  # an "end" that carries its run's deferred start
        self.writer = None  # set while the writer holds the change back (a deferred start)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until written; returns ``True`` if the change took effect."""
        writer = self.writer
        if writer is not None:
            writer.expedite(self)
        if not self.done.wait(timeout):
            raise TimeoutError(f"usertasks: write {self.kind} not done within {timeout}s")
        return self.applied

    def __repr__(self) -> str:
        target = self.ctx.status_id if self.ctx is not None else (self.where or {}).get("pk")
        return f"<Change {self.kind} task={target}>"


def start(ctx: Any) -> Change:
    """The run of ``ctx`` starts: Pending, Retrying (or In Progress, a redelivery) -> In Progress,
    with the run's worker token, its attempt counted, and a ``started`` event (none for a quiet
    fan-out child).  A row that is final already makes the run stop (``ctx.request_abort()``)."""
    events = () if ctx.quiet else [UserTaskEvent.of_run(ctx.status_id, EventKind.STARTED, ctx.attempt, ctx.worker)]
    return Change("start", ctx, events=events)


def end(
    ctx: Any, state: str, kind: str, *, fields: dict[str, Any] | None = None, detail: str = "", lazy: bool = False
) -> Change:
    """The run of ``ctx`` ended: In Progress (this run's) -> ``state`` (a final state; Retrying;
    or Pending when its message goes back to the broker), with ``fields`` (the error) and an
    event of ``kind``.  A child's end is counted on its container in the same transaction."""
    events: list[UserTaskEvent] = []
    if not (ctx.quiet and kind == EventKind.SUCCEEDED):
        events.append(UserTaskEvent.of_run(ctx.status_id, kind, ctx.attempt, sql.storable(clip(detail, 4000))))
    fields = {k: sql.storable(v) if v.__class__ is str and v else v for k, v in (fields or {}).items()}
    return Change("end", ctx, fields=dict(fields, state=state), events=events, lazy=lazy)


def refused(change: Change, exc: BaseException) -> Change | None:
    """The database refused ``change`` outright (a constraint, a value it cannot store): for the
    final end of a run, the change that ends the task Failed instead, with the reason and none of
    the run's own text (its progress counts kept, its message left as stored); ``None`` for any
    other change."""
    if change.kind != "end" or change.fields.get("state") not in FINAL or change.ctx is None:
        return None
    ctx = change.ctx
    first = (str(exc).strip().splitlines() or [""])[0]  # the server's detail may quote the row
    reason = clip(
        sql.storable(
            f"The database refused to store this task's outcome ({change.fields['state']}): "
            f"{type(exc).__name__}: {first}"
        ),
        1000,
    )
    ctx.message = None
    fallback = end(
        ctx,
        State.FAILED,
        EventKind.FAILED,
        fields={"error": reason, "error_class": "", "traceback": ""},
        detail=reason,
    )
    fallback.start = change.start
    return fallback


def body_done(ctx: Any) -> Change:
    """The body of container ``ctx`` returned: it stays In Progress with no run of its own (its
    worker becomes :data:`~usertasks.protocol.WAITING`) until its last child ends; at once if
    they all have."""
    event = UserTaskEvent(
        status_id=ctx.status_id,
        kind=EventKind.NOTE,
        attempt=ctx.attempt,
        detail="The task body finished; waiting for its subtasks.",
    )
    return Change("body_done", ctx, events=[event])


def cancel_before_start(status_id: int, parent_id: int | None = None) -> Change:
    """A canceled task's message was skipped before its body ran: active -> Canceled."""
    event = UserTaskEvent(status_id=status_id, kind=EventKind.CANCELED, detail="Canceled before this attempt started.")
    return Change(
        "guarded",
        where={"pk": status_id, "state__in": ACTIVE_STATES},
        parent_id=parent_id,
        events=[event],
        fields={"state": State.CANCELED, "unique_key": None, "worker": "", "finished": event.created},
    )


def expire_before_start(
    status_id: int, parent_id: int | None = None, text: str = "The task expired before it could run."
) -> Change:
    """A message failed before it could run (Dramatiq's ``AgeLimit``): active -> Failed."""
    event = UserTaskEvent(status_id=status_id, kind=EventKind.FAILED, detail=text)
    return Change(
        "guarded",
        where={"pk": status_id, "state__in": ACTIVE_STATES},
        parent_id=parent_id,
        events=[event],
        fields={"state": State.FAILED, "error": text, "unique_key": None, "finished": event.created},
    )


def flush() -> Change:
    """A change that changes nothing: waiting for it waits for everything submitted before it,
    and it makes the writer store all pending progress."""
    return Change("flush")


def apply(
    changes: list[Change], dirty: Iterable[Any] = (), beating: Iterable[Any] = (), *, using: str | None = None
) -> None:
    """The writer's batch: ``changes``, the progress of the running contexts ``dirty`` and the
    heartbeats of ``beating``, committed together.  Sets each change's ``applied``.

    On PostgreSQL a batch of starts and ends of ordinary runs (nothing else) is ONE statement in
    autocommit: their updates and the INSERT of their events as data-modifying CTEs, so it costs
    a single round trip, commit included.  Otherwise one transaction: one multi-row UPDATE per
    statement shape for the starts, then the ends, the other changes one by one, the progress,
    the heartbeats, the events, and last the counters of the containers whose children ended."""
    db = using or router.db_for_write(UserTaskStatus)
    rows = UserTaskStatus.objects.using(db)
    stmts = sql.Statements.get(connections[db])
    dirty = list(dirty)
    if not dirty and not beating and _one_statement(changes, stmts.connection):
        bases = _counts_bases(rows, [c.ctx for c in changes])
        plans = [_PLAN[c.kind](c) for c in changes]
        events = [e for c in changes for e in (c.start.events if c.start is not None else []) + c.events]
        changed = stmts.update_many_with_events(plans, events)
        _settle(
            changes, [_POST[c.kind](rows, c, where["pk"] in changed, None) for c, (_, where) in zip(changes, plans)]
        )
        _settle_counts(bases, {})
        return
    events, applied = [], []
    with transaction.atomic(using=db):
        batch = _Counts()  # children's ends are counted on their containers once per batch
        bases = _counts_bases(rows, [c.ctx for c in changes if c.kind in ("start", "end")] + dirty)
        results = {}
        for kind in ("start", "end"):  # starts first, so a run's start lands before its end
            group = [c for c in changes if c.kind == kind]
            if group:
                for c, ok in zip(group, stmts.update_many([_PLAN[kind](c) for c in group])):
                    results[id(c)] = _POST[kind](rows, c, ok, batch)
                    if ok:
                        batch.share(c.ctx, State.IN_PROGRESS if kind == "start" else c.fields["state"])
        notices = []
        for c in changes:
            ok = results[id(c)] if id(c) in results else _APPLY[c.kind](rows, c, batch)
            applied.append(ok)
            if ok:
                if c.start is not None:
                    events.extend(c.start.events)
                events.extend(c.events)
                notice = _notice(c)
                if notice is not None:
                    notices.append(notice)
        now = timezone.now()
        for ctx in dirty:
            if stmts.update(_progress(ctx, modified=now), pk=ctx.status_id, state=State.IN_PROGRESS, worker=ctx.worker):
                batch.share(ctx, State.IN_PROGRESS)
        if beating:
            # In Progress, or a custom state (a Celery task's set_state): still running.
            ids = [c.status_id for c in beating]
            stmts.update({"heartbeat": now}, pk__in=ids, state__notin=NOT_RUNNING)
        if events:
            sql.insert(events, db)
        _record_notifications(rows, notices)
        batch.apply(rows)
    _settle(changes, applied)
    _settle_counts(bases, batch.reported)


def _notice(change: Change) -> tuple[int, str, Any] | None:
    """``(status_id, state, notify option)`` when ``change`` (applied) made a top-level task
    final, for its notifications; else ``None``."""
    state = change.fields.get("state")
    if state not in FINAL:
        return None
    if change.kind == "end":
        ctx = change.ctx
        return None if ctx.parent_id is not None else (ctx.status_id, state, (ctx.options or {}).get("notify"))
    if change.kind == "guarded" and change.parent_id is None:
        return ((change.where or {})["pk"], state, FROM_ROW)
    return None


def _notifies(change: Change) -> bool:
    """Whether ``change``, once applied, records a notification (known from the run alone)."""
    notice = _notice(change)
    return notice is not None and bool(app_settings.NOTIFIERS) and notice[1] in notify_states_for(notice[2])


def _record_notifications(rows: Rows, notices: list[tuple[int, str, Any]]) -> None:
    """In the transaction that made these top-level tasks final: their notifications, in the
    outbox (``usertasks.notify`` delivers them once it has committed)."""
    if notices:
        UserTaskNotification.objects.using(rows.db).record(notices)


def _settle(changes: list[Change], applied: list[bool]) -> None:
    """Record the outcome of each change of a committed batch (their ``done`` is set by the
    writer; a folded start is settled with its end)."""
    for c, ok in zip(changes, applied):
        c.applied = ok
        if c.kind == "start" and ok:
            c.ctx.started_written = True
        if c.start is not None:
            c.start.applied = ok
            c.start.done.set()


def _one_statement(changes: list[Change], connection: Any) -> bool:
    """Whether a batch can be written as one autocommitted statement: PostgreSQL, only starts
    and ends of runs outside containers, one change per row, each with its event."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return False
    seen = set()
    for c in changes:
        ctx = c.ctx
        if c.kind not in ("start", "end") or not c.events or ctx.parent_id is not None or ctx.fanout:
            return False
        if c.kind == "end" and _notifies(c):
            return False  # its outbox rows go in the same transaction
        if ctx.status_id in seen:
            return False
        seen.add(ctx.status_id)
    return True


def _progress(ctx: Any, **extra: Any) -> dict[str, Any]:
    completed, total, message = ctx.snapshot()
    counts = dict(ctx.counts) if ctx.counts else {}
    ctx.planned = (completed, total, counts)
    if ctx.fanout:  # a container's steps are its children's (and so are most of its counts)
        fields = {} if message is None else {"message": message}
        fields.update(extra)
        return fields
    fields = dict(extra, completed_steps=completed)
    if total is not None:
        fields["total_steps"] = total
    if message is not None:
        fields["message"] = message
    if counts and counts != ctx.counts_stored and ctx.counts_base is not None:
        # Only this run writes the row's counters: what it counted, on top of the earlier runs'.
        fields["counts"] = UserTaskStatus._meta.get_field("counts").get_db_prep_save(
            counting.merge(ctx.counts_base, counts), connections[router.db_for_write(UserTaskStatus)]
        )
    return fields


def _counts_bases(rows: Rows, contexts: Iterable[Any]) -> dict[int, Any]:
    """The outcome counters stored before this run, for the runs that counted something and
    have not read them yet (one query for the batch; they go under ``ctx.counts_base``).
    Returns the contexts concerned by id, for :func:`_settle_counts`."""
    concerned = {id(c): c for c in contexts if c is not None and c.tracked and (c.counts or c.counts_reported)}
    missing = [c for c in concerned.values() if c.counts_base is None]
    if missing:
        stored = dict(rows.filter(pk__in={c.status_id for c in missing}).values_list("pk", "counts"))
        for c in missing:
            found = stored.get(c.status_id)
            c.counts_base = dict(found) if isinstance(found, dict) else {}
    return concerned


def _settle_counts(concerned: dict[int, Any], reported: dict[int, tuple[Any, Any]]) -> None:
    """After the commit: what each run's counters and steps now stand at, in its row and on
    its container."""
    for ctx in concerned.values():
        if ctx.planned is not None and not ctx.fanout:
            ctx.counts_stored = ctx.planned[2]
    for ctx, (share, counts) in reported.values():
        ctx.share_reported = share
        ctx.counts_reported = counts
        if ctx.fanout:
            ctx.counts_stored = counts


def _start_fields(ctx: Any, at: datetime) -> dict[str, Any]:
    return {
        "state": State.IN_PROGRESS,
        "attempts": sql.NextAttempt(ctx.attempt),
        "started": at,
        "heartbeat": at,
        "modified": at,
        "worker": ctx.worker,
        "eta": None,
    }


#: A run starts from the states In Progress may be entered from, or from In Progress itself (a
#: redelivered message whose earlier run died: the newest run takes the row over).
_START_FROM = (*ALLOWED_FROM[State.IN_PROGRESS], State.IN_PROGRESS)


def as_started(status: UserTaskStatus, ctx: Any, at: datetime) -> None:
    """``status`` (an instance read before the start of ``ctx``'s run is stored) as that start
    will leave it, in memory only: what ``task.status`` shows while the writer holds the start.
    A row the start has reached already (it carries this run's worker token: the start committed
    between the caller's look and its read) or cannot take (final already) is left as read."""
    if status.worker == ctx.worker or status.state not in _START_FROM:
        return
    status.state = State.IN_PROGRESS
    status.attempts = max(status.attempts + 1, ctx.attempt)
    status.started = status.heartbeat = status.modified = at
    status.worker = ctx.worker
    status.eta = None


def _plan_start(change: Change) -> Plan:
    ctx = change.ctx
    fields = _start_fields(ctx, change.at)
    fields.update(_progress(ctx))
    return fields, {"pk": ctx.status_id, "state__in": _START_FROM}


def _post_start(rows: Rows, change: Change, ok: bool, batch: _Counts | None) -> bool:
    return True if ok else _start_refused(rows, change.ctx)


def _start_refused(rows: Rows, ctx: Any) -> bool:
    state = rows.filter(pk=ctx.status_id).values_list("state", flat=True).first()
    if state is None:
        logger.warning(
            "usertasks: row %s of message %s is missing; the task runs untracked", ctx.status_id, ctx.message_id
        )
    else:
        logger.info("usertasks: task %s is already %s; stopping it", ctx.status_id, state)
        ctx.request_abort()
    ctx.row_gone = True
    return False


def _plan_end(change: Change) -> Plan:
    """Retrying, requeued or a final state, for the attempt this context runs; with
    ``change.start``, the run's start too, in the same statement."""
    ctx = change.ctx
    fields = _start_fields(ctx, change.start.at) if change.start is not None else {}
    fields.update(change.fields)
    fields.update(_progress(ctx, modified=change.at))
    if change.fields["state"] in FINAL:
        fields.setdefault("finished", change.at)
        fields["unique_key"] = None
    else:
        fields["worker"] = ""
    if change.start is not None:
        return fields, {"pk": ctx.status_id, "state__in": ACTIVE_STATES}
    return fields, {"pk": ctx.status_id, "state": State.IN_PROGRESS, "worker": ctx.worker}


def _post_end(rows: Rows, change: Change, ok: bool, batch: _Counts | None) -> bool:
    ctx = change.ctx
    if change.start is not None:
        if ok:
            ctx.started_written = True
        else:
            _start_refused(rows, ctx)
    if ok:
        state = change.fields["state"]
        if ctx.fanout and state in (State.FAILED, State.CANCELED):
            # The body of a container ended on its own (an exception after fan_out()): the
            # children that have not run yet never will.
            cancel_pending_children(rows, ctx.status_id, reason="The task ended; its remaining subtasks were canceled.")
        if ctx.parent_id is not None:
            child_ended(rows, ctx.parent_id, ctx.status_id, state, batch)
    return bool(ok)


def _apply_guarded(rows: Rows, change: Change, batch: _Counts | None) -> bool:
    """A change not tied to a run: ``fields`` where ``where`` (the row's state among those it
    may leave), its event, and its count on the container."""
    where = change.where or {}
    n = rows.filter(**where).update(modified=change.at, **change.fields)
    state = change.fields.get("state")
    if n and change.parent_id is not None and state in FINAL:
        child_ended(rows, change.parent_id, where["pk"], state, batch)
    return bool(n)


def _apply_body_done(rows: Rows, change: Change, batch: _Counts | None) -> bool:
    ctx = change.ctx
    n = rows.filter(pk=ctx.status_id, state=State.IN_PROGRESS, worker=ctx.worker).update(
        worker=WAITING, modified=change.at, heartbeat=change.at
    )
    if not n:
        return False
    if ctx.counts and batch is not None:  # what the body counted itself, with its children's
        ctx.planned = (0, None, dict(ctx.counts))
        batch.share(ctx, State.IN_PROGRESS)
    complete_container(rows, counting.info(rows, ctx.status_id))
    return True


_PLAN = {"start": _plan_start, "end": _plan_end}
_POST = {"start": _post_start, "end": _post_end}
_APPLY = {
    "guarded": _apply_guarded,
    "body_done": _apply_body_done,
    "flush": lambda rows, change, batch: True,
}


# =================================================================================================
# Containers: children ending, the container ending
# =================================================================================================


class _Counts:
    """The children that ended in one writer batch, summed per container and counted last (one
    counter UPDATE per container, in primary-key order so two writers never wait on each other
    in a cycle, taken as late as possible so the container's row lock is held briefly)."""

    def __init__(self) -> None:
        self.by_parent: dict[int, dict[str, Any]] = {}
        #: id(ctx) -> (ctx, (its share of steps, its counts) as added to its container by this
        #: batch), settled on the contexts once the batch has committed.
        self.reported: dict[int, tuple[Any, tuple[tuple[int, int], dict[str, int]]]] = {}

    def _entry(self, parent_id: int) -> dict[str, Any]:
        return self.by_parent.setdefault(
            parent_id,
            {
                "succeeded": 0,
                "failed": 0,
                "canceled": 0,
                "skipped": 0,
                "retried": 0,
                "steps": 0,
                "total": 0,
                "tallies": {},
                "child_id": None,
            },
        )

    def add(self, parent_id: int, child_id: int | None, key: str) -> None:
        entry = self._entry(parent_id)
        entry[key] += 1
        if key != "retried":
            entry["child_id"] = child_id

    def share(self, ctx: Any, state: str) -> None:
        """A write of run ``ctx`` (its task now in ``state``) committed with this batch: add to
        its container the steps and counts it did not add yet (``counting.share``).  A
        container's own counts go to its own row the same way."""
        if ctx is None or ctx.planned is None:
            return
        target = ctx.status_id if ctx.fanout else ctx.parent_id
        if target is None:
            return  # a top-level task's counters are in its own row, written with its progress
        previous = self.reported.get(id(ctx))
        share0, counts0 = previous[1] if previous else (ctx.share_reported, ctx.counts_reported)
        completed, total, counts = ctx.planned
        if total is None:
            declared = (ctx.options or {}).get("total_steps")
            total = declared if type(declared) is int else None
        share = (0, 0) if ctx.fanout else counting.share(completed, total, state)
        delta = {k: n - counts0.get(k, 0) for k, n in counts.items() if n != counts0.get(k, 0)}
        if share != share0 and not ctx.fanout:
            entry = self._entry(target)
            entry["steps"] += share[0] - share0[0]
            entry["total"] += share[1] - share0[1]
        if delta:
            entry = self._entry(target)
            entry["tallies"] = counting.merge(entry["tallies"], delta)
        self.reported[id(ctx)] = (ctx, (share, counts if delta else counts0))

    def apply(self, rows: Rows) -> None:
        for parent_id in sorted(self.by_parent):
            entry = self.by_parent[parent_id]
            child_id = entry.pop("child_id")
            children_ended(rows, parent_id, child_id=child_id, **entry)


def child_ended(rows: Rows, parent_id: int, child_id: int | None, state: str, batch: _Counts | None = None) -> None:
    """Child ``child_id`` of ``parent_id`` entered ``state`` (a final state, or Retrying), in the
    current transaction.  In a writer batch the counts are summed and applied once per
    container; otherwise at once (:func:`children_ended`)."""
    key = counting.KEY_FOR.get(state)
    if key is None:
        return
    if batch is None:
        one: dict[str, Any] = {key: 1}
        children_ended(rows, parent_id, child_id=child_id, **one)
    else:
        batch.add(parent_id, child_id, key)


def children_ended(
    rows: Rows | str | None,
    parent_id: int,
    *,
    succeeded: int = 0,
    failed: int = 0,
    canceled: int = 0,
    skipped: int = 0,
    retried: int = 0,
    child_id: int | None = None,
    steps: int = 0,
    total: int = 0,
    tallies: dict[str, int] | None = None,
) -> bool:
    """Count children of ``parent_id`` that ended (and retries), in the transaction that stored
    their ends; then what the container's rules say follows (a pipeline's next stage, a
    fail-fast cancel), and the container's end if they were the last.  ``steps`` of ``total``
    more steps of running children, and ``tallies`` (outcome counters), are added with them.
    ``rows``: a manager or queryset of status rows (its database is used), or a database alias.
    Costs one ``UPDATE ... RETURNING`` (plus, for the last child, the container's own end)."""
    db = rows if rows is None or isinstance(rows, str) else rows.db
    rows = _rows(db)  # whatever was given: the plain manager of its database
    counts = {"succeeded": succeeded, "failed": failed, "canceled": canceled, "skipped": skipped}
    ended = sum(counts.values())
    if not ended and not retried and not steps and not total and not tallies:
        return False
    now = timezone.now()
    info = counting.count(rows, parent_id, counts, retried, now, steps=steps, total=total, tallies=tallies)
    if not ended or info is None or info["state"] not in ACTIVE_STATES:
        return False
    follow = counting.after_children(info, child_id, succeeded=succeeded, failed=failed, canceled=canceled)
    if follow == counting.STOP_STAGES:
        stop_stages(rows, parent_id, reason="An earlier stage did not succeed.")
        info = counting.info(rows, parent_id)
    elif follow == counting.NEXT_STAGE:
        release_next_stage(rows, parent_id, child_id)
        info = counting.info(rows, parent_id)
    elif follow == counting.CANCEL_REST and cancel_pending_children(
        rows, parent_id, reason="A subtask failed; the others were canceled.", now=now
    ):
        info = counting.info(rows, parent_id)
    return complete_container(rows, info)


def complete_container(rows: Rows, info: dict[str, Any] | None) -> bool:
    """In Progress (body done, :data:`~usertasks.protocol.WAITING`) -> the container's final
    state, once every child has ended (``info``: ``usertasks.containers.counting.info``).
    Returns ``True`` in the one transaction that ends it; its completion callback and
    ``task_finished`` follow the commit."""
    if info is None or info["state"] != State.IN_PROGRESS or info["worker"] != WAITING:
        return False
    outcome = completion.outcome(info)
    if outcome is None:
        return False
    state, summary = outcome
    options = info["options"] or {}
    now = timezone.now()
    fields = {"state": state, "finished": now, "modified": now, "unique_key": None, "worker": "", "message": summary}
    fields["completed_steps"] = F("total_steps")  # every child has ended: all its steps are done
    spec_key = completion.spec_key(options)
    callback = (options.get(spec_key) or {}).get("on_complete")
    if callback:
        # The callback is due from this commit on; the mark goes once it is sent, and the
        # reaper sends the callbacks of containers still marked (a crash in between).
        fields["options"] = dict(options, **{spec_key: dict(options[spec_key], **{CALLBACK_DUE: True})})
    detail = summary
    if state == State.FAILED:
        first = (
            rows.filter(parent_id=info["pk"], state=State.FAILED)
            .order_by("finished", "pk")
            .values("name", "error", "error_class")
            .first()
        )
        fields["error"], fields["error_class"] = completion.error(info, first)
        detail = fields["error"]
    n = rows.filter(pk=info["pk"], state=State.IN_PROGRESS, worker=WAITING).update(**fields)
    if not n:
        return False
    kind = {State.SUCCEEDED: EventKind.SUCCEEDED, State.FAILED: EventKind.FAILED, State.CANCELED: EventKind.CANCELED}[
        state
    ]
    UserTaskEvent.objects.using(rows.db).create(status_id=info["pk"], kind=kind, created=now, detail=clip(detail, 4000))
    pk, db = info["pk"], rows.db
    if info.get("parent_id") is None:
        _record_notifications(rows, [(pk, state, options.get("notify"))])
    transaction.on_commit(lambda: completion.finished(pk, state, callback, db), using=db)
    if info.get("parent_id") is not None:
        # A container inside a container (a pipeline stage that fans out): count it there,
        # with the outcome counters it summed.
        tallies = info.get("counts") or None
        if tallies:
            children_ended(rows, info["parent_id"], child_id=pk, tallies=tallies, **{counting.KEY_FOR[state]: 1})
        else:
            child_ended(rows, info["parent_id"], pk, state)
    return True


def cancel_pending_children(
    rows: Rows, parent_id: int, *, reason: str, by: Any = None, now: datetime | None = None
) -> int:
    """In the current transaction: every child of ``parent_id`` that has not started ->
    Canceled (one UPDATE; for a pipeline, the stages that never ran are skipped), counted on
    the container; the running ones are asked to stop (their abort flags, on commit).  Returns
    how many ended here."""
    now = now or timezone.now()
    found = rows.filter(pk=parent_id).values("options").first()
    if found is None:
        return 0
    if "pipeline" in (found["options"] or {}):
        return stop_stages(rows, parent_id, reason=reason, by=by, now=now)
    fields = {"state": State.CANCELED, "cancel_requested": now, "finished": now, "modified": now, "unique_key": None}
    if by is not None:
        fields["canceled_by"] = by
    pending = rows.filter(parent_id=parent_id, state__in=(State.PENDING, State.RETRYING))
    claimed = _claimed(pending)
    if claimed:  # a worker has just taken them: they are running, whatever their rows say yet
        pending = pending.exclude(pk__in=claimed)
    n = pending.update(**fields)
    running = list(rows.filter(parent_id=parent_id, state=State.IN_PROGRESS).values_list("pk", flat=True))
    running += sorted(claimed)
    if running:
        rows.filter(pk__in=running, cancel_requested__isnull=True).update(cancel_requested=now)
        transaction.on_commit(lambda: _raise_flags(running), using=rows.db)
    if n:
        UserTaskEvent.objects.using(rows.db).create(
            status_id=parent_id,
            kind=EventKind.NOTE,
            created=now,
            actor=by,
            detail=f"{reason} {n:,} not yet started were canceled"
            + (f"; {len(running)} running asked to stop." if running else "."),
        )
        counted = rows.filter(pk=parent_id).update(
            children_canceled=F("children_canceled") + n,
            completed_steps=F("completed_steps") + n,
            modified=now,
        )
        if not counted:
            return 0
    return n


def _claimed(pending: Rows) -> set[int]:
    """Raise the abort flags of the children in ``pending`` and return those a worker has
    already claimed (atomic abort stores; see ``usertasks.abort.redis``): their bodies may be
    running although their rows still say Pending, so they are asked to stop, not canceled.
    Nothing is raised in a Django ``TestCase`` (``usertasks.signals.test_case_commit_point``)."""
    if test_case_commit_point(transaction.get_connection(pending.db)):
        return set()
    try:
        backend = get_backend()
        if not backend.atomic_claims:
            return set()
        return backend.cancel_pending_many(list(pending.values_list("pk", flat=True)))
    except Exception as exc:
        logger.warning("usertasks: cannot raise the abort flags of pending subtasks (%s)", exc)
        return set()


def _raise_flags(ids: Iterable[int]) -> None:
    """Raise the abort flags of the running tasks ``ids`` (they stop at their next ``step()``)."""
    for pk in ids:
        try:
            set_flag(pk)
        except Exception as exc:
            logger.warning("usertasks: could not ask running subtask %s to stop: %s", pk, exc)


def cancel_children(status: UserTaskStatus, *, by: Any = None, reason: str = "The task was canceled.") -> int:
    """Cancel the children of container ``status`` that have not ended: the container is marked
    canceled, the pending children are canceled at once (one UPDATE), the running ones stop at
    their next ``step()``; the container ends (Canceled) with the last of them.  Returns how
    many were canceled at once."""
    db = router.db_for_write(type(status))
    rows = _rows(db)
    now = timezone.now()
    with transaction.atomic(using=db):
        mark = {"cancel_requested": now}
        if by is not None:
            mark["canceled_by"] = by
        rows.filter(pk=status.pk, cancel_requested__isnull=True).update(**mark)
        n = cancel_pending_children(rows, status.pk, reason=reason, by=by, now=now)
        complete_container(rows, counting.info(rows, status.pk))
    return n


def stop_stages(rows: Rows, parent_id: int, *, reason: str, by: Any = None, now: datetime | None = None) -> int:
    """In the current transaction: a pipeline's stages that never ran -> Canceled with a
    "skipped" event, a stage sent but not started -> Canceled, a running one is asked to stop.
    Counts them on the container; returns how many ended here."""
    now = now or timezone.now()
    open_stages = list(
        rows.filter(parent_id=parent_id, state__in=(State.PENDING, State.RETRYING, State.IN_PROGRESS))
        .order_by("pk")
        .values("pk", "state", "options")
    )
    skipped, canceled, running, events = 0, 0, [], []
    base = {"state": State.CANCELED, "finished": now, "modified": now, "unique_key": None}
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
            children_skipped=F("children_skipped") + skipped,
            children_canceled=F("children_canceled") + canceled,
            completed_steps=F("completed_steps") + skipped + canceled,
            modified=now,
        )
    if running:
        transaction.on_commit(lambda: _raise_flags(running), using=rows.db)
    return skipped + canceled


def release_next_stage(rows: Rows, parent_id: int, child_id: int | None) -> bool:
    """A pipeline's stage ``child_id`` succeeded: the next one, written up front and waiting,
    is queued (its message is sent once the transaction commits).  Its state stays Pending."""
    import dramatiq

    nxt = rows.filter(parent_id=parent_id, pk__gt=child_id).order_by("pk").values("pk", "state", "options").first()
    if nxt is None or nxt["state"] != State.PENDING or not nxt["options"].get("waiting"):
        return False
    options = dict(nxt["options"])
    data = options.pop("message")
    options.pop("waiting", None)
    now = timezone.now()
    if not rows.filter(pk=nxt["pk"], state=State.PENDING).update(options=options, modified=now, eta=now):
        return False
    UserTaskEvent.objects.using(rows.db).create(status_id=nxt["pk"], kind=EventKind.ENQUEUED, created=now)
    pairs: list[tuple[dramatiq.Message, int]] = [(dramatiq.Message(**data), nxt["pk"])]
    db = rows.db
    transaction.on_commit(lambda: enqueue_children(dramatiq.get_broker(), parent_id, pairs, db), using=db)
    return True


def enqueue_children(broker: Any, parent_id: int, pairs: list[tuple[Any, int]], db: str | None = None) -> None:
    """Send the messages of committed child rows (``(message, pk)`` pairs).  A broker failure
    fails the children not sent (counted on the container) and is logged; the container goes
    on with the others."""
    try:
        enqueue_many(broker, [(message, None, {STATUS_OPTION: pk}) for message, pk in pairs])
    except EnqueueFailed as failure:
        exc = failure.error
        failed = [pk for _, pk in pairs[failure.sent :]]
        logger.error("usertasks: could not enqueue %d subtask(s) of task %s: %s", len(failed), parent_id, exc)
        rows = _rows(db)
        with transaction.atomic(using=rows.db):
            n, text = fail_unsent(rows.db, failed, exc, events=False)
            UserTaskEvent.objects.using(rows.db).create(
                status_id=parent_id,
                kind=EventKind.NOTE,
                detail=f"{n} subtask(s) could not be queued: {text}",
            )
            if n:
                children_ended(rows, parent_id, failed=n)


# =================================================================================================
# Changes outside runs: cancels, the reaper, unsent messages
# =================================================================================================


def fail_unsent(
    db: str, pks: list[int], exc: BaseException, *, now: datetime | None = None, events: bool = True
) -> tuple[int, str]:
    """Pending -> Failed for the rows ``pks`` whose messages could not be sent, so that no page
    waits for them for ever (with a ``failed`` event each unless ``events`` is false).  Returns
    how many changed and the error text stored."""
    now = now or timezone.now()
    text = clip(f"The task could not be queued: {exc}", 2000)
    rows = _rows(db)
    n = 0
    for i in range(0, len(pks), 1000):
        n += rows.filter(pk__in=pks[i : i + 1000], state=State.PENDING).update(
            state=State.FAILED,
            error=text,
            error_class=type(exc).__name__,
            finished=now,
            modified=now,
            unique_key=None,
        )
    if n and events:
        UserTaskEvent.objects.using(rows.db).bulk_create(
            [UserTaskEvent(status_id=pk, kind=EventKind.FAILED, detail=text, created=now) for pk in pks]
        )
    return n, text


def cancel_not_started(
    rows: Rows,
    pk: int,
    previous: str,
    *,
    parent_id: int | None = None,
    by: Any = None,
    now: datetime | None = None,
) -> bool:
    """Pending or Retrying (``previous``, as read) -> Canceled: the task never runs again.
    Counted on its container; ``task_finished`` follows the commit.  Returns whether it
    changed."""
    now = now or timezone.now()
    n = rows.filter(pk=pk, state=previous).update(
        state=State.CANCELED,
        cancel_requested=now,
        canceled_by=by,
        finished=now,
        modified=now,
        unique_key=None,
        worker="",
    )
    if not n:
        return False
    detail = "Canceled before it started." if previous == State.PENDING else "Canceled while waiting to retry."
    UserTaskEvent.objects.using(rows.db).create(
        status_id=pk, kind=EventKind.CANCELED, created=now, actor=by, detail=detail
    )
    if parent_id is not None:
        child_ended(rows, parent_id, pk, State.CANCELED)
    else:
        _record_notifications(rows, [(pk, State.CANCELED, FROM_ROW)])
    send_task_finished(pk, State.CANCELED, using=rows.db)
    return True


def request_cancel(rows: Rows, pk: int, *, by: Any = None, now: datetime | None = None) -> bool:
    """An active task is asked to stop (``cancel_requested``, ``canceled_by``, a
    ``cancel_requested`` event); its run ends it Canceled.  Returns whether it changed."""
    now = now or timezone.now()
    n = rows.filter(pk=pk).exclude(state__in=FINAL_STATES).update(cancel_requested=now, canceled_by=by, modified=now)
    if n:
        UserTaskEvent.objects.using(rows.db).create(
            status_id=pk, kind=EventKind.CANCEL_REQUESTED, created=now, actor=by
        )
    return bool(n)


def requeue_lost(rows: Rows, row: Any, where: dict[str, Any], *, detail: str, now: datetime) -> bool:
    """In Progress, with a dead worker and its message still in the broker -> Pending: the next
    delivery runs it again.  ``where``: the row as the reaper read it.  Returns whether it
    changed."""
    with transaction.atomic(using=rows.db):
        n = rows.filter(pk=row["pk"], **where).update(state=State.PENDING, worker="", modified=now)
        if n:
            UserTaskEvent.objects.using(rows.db).create(
                status_id=row["pk"],
                kind=EventKind.REQUEUED,
                created=now,
                attempt=row["attempts"],
                detail=detail,
            )
    return bool(n)


def end_lost(rows: Rows, row: Any, where: dict[str, Any], *, text: str, kind: str, now: datetime) -> str | None:
    """A task whose worker died (In Progress) or whose message is gone (Pending, Retrying) ->
    Failed with ``text``, or Canceled when its user had asked to cancel it.  ``where``: the row
    as the reaper read it.  Counted on its container; ``task_finished`` follows the commit.
    Returns the state entered, or ``None``."""
    state = State.FAILED
    fields = {"error": text, "error_class": ""}
    if row.get("cancel_requested"):  # its user had asked to cancel it: that is what happened
        state, kind, fields = State.CANCELED, EventKind.CANCELED, {}
    with transaction.atomic(using=rows.db):
        n = rows.filter(pk=row["pk"], **where).update(
            state=state,
            finished=now,
            modified=now,
            unique_key=None,
            worker="",
            **fields,
        )
        if not n:
            return None
        UserTaskEvent.objects.using(rows.db).create(
            status_id=row["pk"],
            kind=kind,
            created=now,
            attempt=row["attempts"],
            detail=text,
        )
        if row.get("parent_id") is not None:
            child_ended(rows, row["parent_id"], row["pk"], state)
        else:
            _record_notifications(rows, [(row["pk"], state, FROM_ROW)])
        send_task_finished(row["pk"], state, using=rows.db)
    return state


# =================================================================================================
# Runs of other task systems (the Celery compatibility layer)
# =================================================================================================


def begin(status: UserTaskStatus, *, worker: str = "", container: bool = False) -> bool:
    """Pending or Retrying -> In Progress for a run started outside Dramatiq, with a ``started``
    event (containers have no worker of their own).  Returns whether it changed."""
    now = timezone.now()
    fields = {"started": now, "eta": None, "attempts": _at_least_one(), "modified": now}
    if not container:
        fields.update(heartbeat=now, worker=worker[:255])
    rows = _rows()
    with transaction.atomic(using=rows.db):
        n = rows.filter(pk=status.pk, state__in=ALLOWED_FROM[State.IN_PROGRESS]).update(
            state=State.IN_PROGRESS, **fields
        )
        if n:
            UserTaskEvent.objects.using(rows.db).create(
                status_id=status.pk, kind=EventKind.STARTED, attempt=status.attempts, detail=worker[:4000]
            )
    return bool(n)


def _at_least_one() -> Any:
    from django.db.models.functions import Greatest

    return Greatest(F("attempts"), 1)


def finish(
    status: UserTaskStatus,
    state: str,
    kind: str,
    *,
    detail: str = "",
    actor: Any = None,
    where: dict[str, Any] | None = None,
    count_parent: bool = True,
    **fields: Any,
) -> bool:
    """Active -> ``state`` (final) for a task whose run is not Dramatiq's, with an event of
    ``kind``; the container's counter of that outcome grows by one (its rules are the
    compatibility layer's own); ``task_finished`` follows the commit, and a raised abort flag
    is cleared.  Returns whether it changed."""
    now = timezone.now()
    fields.setdefault("finished", now)
    fields["unique_key"] = None
    rows = _rows()
    with transaction.atomic(using=rows.db):
        n = (
            rows.filter(pk=status.pk, **(where or {}))
            .exclude(state__in=FINAL_STATES)  # custom states included
            .update(state=state, modified=now, **fields)
        )
        if not n:
            return False
        UserTaskEvent.objects.using(rows.db).create(
            status_id=status.pk, kind=kind, attempt=status.attempts, detail=str(detail)[:4000], actor=actor
        )
        if count_parent and status.parent_id:
            counter = counting.COUNTER_FOR[state]
            rows.filter(pk=status.parent_id).update(**{counter: F(counter) + 1})
        if not status.parent_id:
            _record_notifications(rows, [(status.pk, state, (status.options or {}).get("notify"))])
    status.refresh_from_db()
    if state == State.CANCELED or status.cancel_requested is not None:
        pk = status.pk
        transaction.on_commit(lambda: clear_flags([pk]), using=rows.db)
    send_task_finished(status.pk, state, using=rows.db)
    return True


def retrying(status: UserTaskStatus, *, reason: str = "") -> bool:
    """In Progress or Pending -> Retrying: this attempt failed and the task will run again
    (its attempt counted now).  Returns whether it changed."""
    fields = {"attempts": F("attempts") + 1, "worker": "", "modified": timezone.now()}
    if reason:
        fields["error"] = str(reason)[:4000]
    rows = _rows()
    with transaction.atomic(using=rows.db):
        # From In Progress (or a custom state) or Pending.
        n = (
            rows.filter(pk=status.pk)
            .exclude(state__in=(State.RETRYING, *FINAL_STATES))
            .update(state=State.RETRYING, **fields)
        )
        if n:
            status.refresh_from_db()
            UserTaskEvent.objects.using(rows.db).create(
                status_id=status.pk, kind=EventKind.RETRYING, attempt=status.attempts, detail=str(reason)[:4000]
            )
    return bool(n)


def set_custom_state(status: UserTaskStatus, custom_state: str) -> bool:
    """django-user-tasks' ``set_state("Updating")``: the text becomes the row's ``state`` (and
    its message), a custom state that everything else treats as In Progress (see
    :data:`~usertasks.states.STANDARD_STATES`); a Pending or Retrying task starts with it.  Only
    an active task changes, and only to a custom state (the standard ones have their own
    changes).  Returns whether it changed."""
    if custom_state in STANDARD_STATES:
        raise ValueError(f"{custom_state!r} is a standard state, not a custom one")
    rows = _rows()
    now = timezone.now()
    fields = {"state": custom_state[:128], "message": custom_state[:1000], "modified": now}
    with transaction.atomic(using=rows.db):
        n = rows.filter(pk=status.pk).exclude(state__in=NOT_RUNNING).update(**fields)
        if not n:  # not started yet: it starts now
            n = rows.filter(pk=status.pk, state__in=ALLOWED_FROM[State.IN_PROGRESS]).update(
                started=now, heartbeat=now, attempts=_at_least_one(), **fields
            )
            if n:
                UserTaskEvent.objects.using(rows.db).create(
                    status_id=status.pk, kind=EventKind.STARTED, attempt=status.attempts
                )
    return bool(n)


def clear_custom_state(status: UserTaskStatus) -> bool:
    """A custom state -> In Progress (``set_state("In Progress")``).  Returns whether it changed."""
    rows = _rows()
    n = (
        rows.filter(pk=status.pk)
        .exclude(state__in=STANDARD_STATES)
        .update(state=State.IN_PROGRESS, message="", modified=timezone.now())
    )
    return bool(n)


def reopen_group(status: UserTaskStatus) -> bool:
    """Succeeded -> In Progress for a Celery group whose size grows as its tasks are published:
    when its first tasks ended before the next one was published, it may have ended already.
    The one change against :data:`~usertasks.states.ALLOWED_FROM`, for django-user-tasks'
    groups only.  Returns whether it changed."""
    rows = _rows()
    n = rows.filter(pk=status.pk, state=State.SUCCEEDED).update(
        state=State.IN_PROGRESS, finished=None, modified=timezone.now()
    )
    if n:
        UserTaskEvent.objects.using(rows.db).create(
            status_id=status.pk, kind=EventKind.NOTE, detail="More tasks joined after the first ones had ended."
        )
    return bool(n)
