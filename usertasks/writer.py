"""The per-process status writer.

Every worker process has one writer thread.  Worker threads hand it state changes (``start``,
``retrying``, final states) and it applies everything that is waiting in **one transaction**
(group commit), together with the progress of every running task that changed since the last
write.  A worker thread that ends a task waits until the transaction holding its final state
has committed, so a message is acknowledged only once its outcome is durable.

Failures: a transient database error (connection lost, "database is locked") makes the writer
close its connection and try the same batch again with a growing pause, for as long as it
takes; a change the database refuses outright (a bug, not an outage) is retried on its own so
it cannot hold up the others, then logged and dropped.  See ``docs/guarantees.md``.
"""

import logging
import os
import threading
import time
from collections import deque

from django.db import DatabaseError, InterfaceError, OperationalError, connections, router, transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from .states import ACTIVE_STATES, State

logger = logging.getLogger("usertasks.writer")

__all__ = ["Op", "Writer", "get_writer"]


class Op:
    """One change for the writer.  ``wait()`` blocks until it is committed (or refused)."""

    __slots__ = ("kind", "ctx", "at", "fields", "events", "done", "applied", "error")

    def __init__(self, kind, ctx=None, *, fields=None, events=()):
        self.kind = kind
        self.ctx = ctx
        self.at = timezone.now()
        self.fields = fields or {}
        self.events = list(events)
        self.done = threading.Event()
        self.applied = False
        self.error = None

    def wait(self, timeout=None):
        """Block until written; returns ``True`` if the change took effect."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"usertasks: write {self.kind} not done within {timeout}s")
        return self.applied


class Writer:
    def __init__(self):
        self.pid = os.getpid()
        self._cond = threading.Condition()
        self._queue = deque()
        self._running = {}  # id(ctx) -> ctx, for progress and heartbeats
        self._stopping = False
        self._next_progress = 0.0
        self._next_heartbeat = 0.0
        self._failing_since = None
        self._idle = True
        self.batches = 0  # for tests and benchmarks
        self.pollers = []  # callables run on every tick with the running contexts (abort checks)
        self._thread = threading.Thread(target=self._run, name="usertasks-writer", daemon=True)
        self._thread.start()

    # -- API for worker threads ----------------------------------------------------------------

    def register(self, ctx):
        with self._cond:
            self._running[id(ctx)] = ctx

    def unregister(self, ctx):
        with self._cond:
            self._running.pop(id(ctx), None)

    def running(self):
        with self._cond:
            return list(self._running.values())

    def submit(self, op):
        with self._cond:
            self._queue.append(op)
            self._cond.notify()
        return op

    def flush(self, timeout=30):
        """Write everything submitted so far, and all pending progress; wait for it."""
        return self.submit(Op("flush")).wait(timeout)

    def wake(self):
        with self._cond:
            self._cond.notify()

    def stop(self, timeout=30):
        try:
            self.flush(timeout)
        finally:
            with self._cond:
                self._stopping = True
                self._cond.notify()
            self._thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------------

    def _run(self):
        from .conf import app_settings

        while True:
            try:
                interval = float(app_settings.PROGRESS_INTERVAL)
                with self._cond:
                    now = time.monotonic()
                    if not self._queue and not self._stopping:
                        wait = self._next_progress - now if self._running else None
                        for poller in self.pollers if self._running else ():
                            wait = min(wait, poller.interval) if wait is not None else poller.interval
                        if wait is None or wait > 0:
                            self._cond.wait(wait)
                    if self._stopping and not self._queue:
                        break
                    limit = int(app_settings.WRITE_BATCH_SIZE)
                    ops = [self._queue.popleft() for _ in range(min(limit, len(self._queue)))]
                    running = list(self._running.values())
                for poller in self.pollers:
                    try:
                        poller(running)
                    except Exception:  # a poller must not hold up the writes
                        logger.exception("usertasks writer: poller %r failed", poller)
                now = time.monotonic()
                progress = now >= self._next_progress or any(op.kind == "flush" for op in ops)
                heartbeat = now >= self._next_heartbeat
                started = [c for c in running if c.tracked and getattr(c, "started_written", False)]
                dirty = [c for c in started if c.dirty] if progress else []
                beating = started if heartbeat else []
                if progress:
                    self._next_progress = now + interval
                if heartbeat:
                    self._next_heartbeat = now + float(app_settings.HEARTBEAT_INTERVAL)
                if not ops and not dirty and not beating:
                    continue
                self._write(ops, dirty, beating)
            except Exception:  # never let the thread die: worker threads wait on it
                logger.exception("usertasks writer: unexpected error")
                time.sleep(0.5)
        self._close()

    def _write(self, ops, dirty, beating):
        delay = 0.05
        while True:
            try:
                self._apply(ops, dirty, beating)
                if self._failing_since is not None:
                    logger.warning(
                        "usertasks: database writable again after %.1fs", time.monotonic() - self._failing_since
                    )
                    self._failing_since = None
                break
            except (OperationalError, InterfaceError) as exc:
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    logger.warning("usertasks: cannot write task states (%s); retrying until it works", exc)
                else:
                    logger.debug("usertasks: still cannot write task states: %s", exc)
                self._close()
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception as exc:
                if len(ops) > 1:
                    for op in ops:
                        self._write([op], (), ())
                    return
                logger.exception("usertasks: dropped a state change the database refused: %r", ops)
                for op in ops:
                    op.error = exc
                break
        for op in ops:
            op.done.set()
        self.batches += 1

    def _close(self):
        from .models import UserTaskStatus

        try:
            connections[router.db_for_write(UserTaskStatus)].close()
        except Exception:
            pass

    # -- SQL -----------------------------------------------------------------------------------

    def _apply(self, ops, dirty, beating):
        from .models import UserTaskEvent, UserTaskStatus

        db = router.db_for_write(UserTaskStatus)
        rows = UserTaskStatus.objects.using(db)
        events = []
        applied = []
        from . import fanout

        with transaction.atomic(using=db):
            fanout.begin_batch()  # children's ends are counted on their containers once per batch
            for op in ops:
                ok = APPLY[op.kind](rows, op)
                applied.append(ok)
                if ok:
                    events.extend(op.events)
            now = timezone.now()
            for ctx in dirty:
                rows.filter(pk=ctx.status_id, state=State.IN_PROGRESS, worker=ctx.worker).update(
                    modified=now, **_progress(ctx)
                )
            if beating:
                rows.filter(pk__in=[c.status_id for c in beating], state=State.IN_PROGRESS).update(heartbeat=now)
            if events:
                UserTaskEvent.objects.using(db).bulk_create(events)
            fanout.end_batch(rows)
        for op, ok in zip(ops, applied):
            op.applied = ok
            if op.kind == "start" and ok:
                op.ctx.started_written = True


def _progress(ctx):
    completed, total, message = ctx.snapshot()
    if getattr(ctx, "fanout", False):  # a container's steps are its children's (usertasks.fanout)
        return {} if message is None else {"message": message}
    fields = {"completed_steps": completed}
    if total is not None:
        fields["total_steps"] = total
    if message is not None:
        fields["message"] = message
    return fields


def _apply_start(rows, op):
    ctx = op.ctx
    n = rows.filter(pk=ctx.status_id, state__in=ACTIVE_STATES).update(
        state=State.IN_PROGRESS,
        attempts=Greatest(F("attempts") + 1, ctx.attempt),
        started=op.at,
        heartbeat=op.at,
        modified=op.at,
        worker=ctx.worker,
        eta=None,
        **_progress(ctx),
    )
    if n:
        return True
    state = rows.filter(pk=ctx.status_id).values_list("state", flat=True).first()
    if state is None:
        logger.warning("usertasks: row %s of message %s is missing; the task runs untracked", ctx.status_id, ctx.message_id)
    else:
        logger.info("usertasks: task %s is already %s; stopping it", ctx.status_id, state)
        ctx.request_abort()
    ctx.row_gone = True
    return False


def _apply_end(rows, op):
    """Retrying or a final state, for the attempt this context runs."""
    ctx = op.ctx
    fields = dict(op.fields, modified=op.at, **_progress(ctx))
    if op.fields.get("state") in (State.SUCCEEDED, State.FAILED, State.CANCELED):
        fields.setdefault("finished", op.at)
        fields["unique_key"] = None
    else:
        fields["worker"] = ""
    n = rows.filter(pk=ctx.status_id, state=State.IN_PROGRESS, worker=ctx.worker).update(**fields)
    if n and (getattr(ctx, "parent_id", None) is not None or getattr(ctx, "fanout", False)):
        from . import fanout  # counters of the container, in this same transaction

        if getattr(ctx, "fanout", False):
            fanout.body_ended(rows, ctx, op.fields.get("state"))
        if getattr(ctx, "parent_id", None) is not None:
            fanout.child_ended(rows, ctx.parent_id, ctx.status_id, op.fields.get("state"))
    return bool(n)


def _apply_update(rows, op):
    """A guarded update not tied to a run: ``fields`` where ``op.events`` ... (used by the reaper)."""
    where = op.fields.pop("_where")
    parent_id = op.fields.pop("_parent", None)  # a child ending here is counted on its container
    n = rows.filter(**where).update(modified=op.at, **op.fields)
    if n and parent_id is not None and op.fields.get("state") in (State.SUCCEEDED, State.FAILED, State.CANCELED):
        from .fanout import child_ended

        child_ended(rows, parent_id, where.get("pk"), op.fields["state"])
    return bool(n)


def _apply_body_done(rows, op):
    from .fanout import body_done

    return body_done(rows, op)


APPLY = {
    "start": _apply_start,
    "end": _apply_end,
    "update": _apply_update,
    "body_done": _apply_body_done,
    "flush": lambda rows, op: True,
}


_writer = None
_writer_lock = threading.Lock()


def get_writer():
    """This process's writer (started on first use, and again in a forked child)."""
    global _writer
    w = _writer
    if w is None or w.pid != os.getpid():
        with _writer_lock:
            if _writer is None or _writer.pid != os.getpid():
                _writer = Writer()
            w = _writer
    return w


def stop_writer(timeout=30):
    global _writer
    with _writer_lock:
        w, _writer = _writer, None
    if w is not None and w.pid == os.getpid():
        w.stop(timeout)
