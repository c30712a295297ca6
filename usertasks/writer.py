"""The per-process status writer.

Every worker process has one writer thread.  Worker threads hand it the changes of their runs
(``usertasks.transitions``: starts, ends, ...) and it applies everything that is waiting in
**one transaction** (group commit, :func:`usertasks.transitions.apply`), together with the
progress of every running task that changed since the last write.  A worker thread that ends a task waits until the transaction holding its final state
has committed, so a message is acknowledged only once its outcome is durable.

Starts are deferred: the start of a run whose body need not wait for it is held until the next
progress tick (``PROGRESS_INTERVAL``), and when the run ends before then, its start and its end
become ONE guarded ``UPDATE``.  Ends that no thread waits for (only their messages'
acknowledgements do, ``usertasks.redis.acks``) may wait up to ``WRITE_LINGER`` seconds for company, so
that the ends of many runs share a transaction; anything a thread waits for is written at once
and takes them along.  Short tasks therefore cost one statement in a shared
transaction.  The hot statements are prepared SQL (``usertasks.sql``), not ORM querysets, which
cost ten times as much to build.

Failures: a transient database error (connection lost, "database is locked") makes the writer
close its connection and try the same batch again with a growing pause, for as long as it
takes; a change the database refuses outright (a bug, not an outage) is retried on its own so
it cannot hold up the others, then logged and dropped.  See ``docs/guarantees.md``.
"""

import logging
import threading
import time
from collections import deque

from django.db import InterfaceError, OperationalError, connections, router

from . import transitions
from .models import UserTaskStatus
from .process import PerProcess

logger = logging.getLogger("usertasks.writer")

__all__ = ["Writer", "get_writer", "stop_writer"]


class Writer:
    def __init__(self):
        self._cond = threading.Condition()
        self._queue: deque[transitions.Change] = deque()
        self._eager = 0  # ops in the queue that are not lazy
        self._lazy_since = None  # when the first lazy op of the queue arrived
        self._held = {}  # id(ctx) -> deferred start op
        self._running = {}  # id(ctx) -> ctx, for progress and heartbeats
        self._stopping = False
        self._next_progress = 0.0
        self._next_heartbeat = 0.0
        self._failing_since = None
        self._idle = True
        self.batches = 0  # for tests and benchmarks
        self._thread = threading.Thread(target=self._run, name="usertasks-writer", daemon=True)
        self._thread.start()

    # -- API for worker threads ----------------------------------------------------------------

    def register(self, ctx):
        with self._cond:
            self._running[id(ctx)] = ctx
            if len(self._running) == 1:
                self._cond.notify()  # it slept without a deadline: now it has ticks to keep

    def unregister(self, ctx):
        with self._cond:
            self._running.pop(id(ctx), None)

    def running(self):
        with self._cond:
            return list(self._running.values())

    def submit(self, op):
        with self._cond:
            ctx = op.ctx
            if ctx is not None and self._held:
                start = self._held.pop(id(ctx), None)
                if start is not None:
                    start.writer = None
                    if op.kind == "end":
                        op.start = start  # one UPDATE for the whole run
                    else:
                        self._append(start)
            self._append(op)
        return op

    def _append(self, op):
        """Queue ``op`` (the condition held) and wake the thread if it has to act on it now: an
        op someone waits for, or the first lazy one (the thread then lingers, asleep)."""
        queue = self._queue
        if op.lazy:
            if not queue:
                self._lazy_since = time.monotonic()
                queue.append(op)
                self._cond.notify()
                return
        else:
            self._eager += 1
        queue.append(op)
        if not op.lazy or len(queue) >= self._linger_limit:
            self._cond.notify()

    def submit_start(self, op, defer=True):
        """Submit the start of a run; with ``defer`` it is held until the next progress tick
        (or until the run's end arrives, which then carries it)."""
        if not defer:
            return self.submit(op)
        with self._cond:
            op.writer = self
            self._held[id(op.ctx)] = op
            if len(self._held) == 1 and not self._running:
                self._cond.notify()  # the thread may sleep without a deadline
        return op

    def expedite(self, op: transitions.Change) -> None:
        """Write a held start now (someone waits for it)."""
        with self._cond:
            if self._held.get(id(op.ctx)) is op:
                del self._held[id(op.ctx)]
                op.writer = None
                self._append(op)

    def flush(self, timeout=30):
        """Write everything submitted so far, and all pending progress; wait for it."""
        return self.submit(transitions.flush()).wait(timeout)

    def stop(self, timeout=30):
        try:
            self.flush(timeout)
        finally:
            with self._cond:
                self._stopping = True
                self._cond.notify()
            self._thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------------

    #: Lazy ops queued at which the thread writes without lingering any longer.
    _linger_limit = 500

    def _run(self):
        from .conf import app_settings

        while True:
            try:
                interval = float(app_settings.PROGRESS_INTERVAL)
                limit = int(app_settings.WRITE_BATCH_SIZE)
                linger = _seconds(app_settings.WRITE_LINGER)
                with self._cond:
                    self._linger_limit = limit
                    now = time.monotonic()
                    if not self._queue and not self._stopping:
                        wait = self._next_progress - now if (self._running or self._held) else None
                        if wait is None or wait > 0:
                            self._cond.wait(wait)
                        now = time.monotonic()
                    if self._queue and self._lingers(linger, limit, now):
                        # Only lazy ops (acknowledgements wait for them, no thread does): give
                        # the other worker threads a moment to add theirs to the same commit.
                        until = self._lazy_since + linger
                        if self._running or self._held:
                            until = min(until, self._next_progress)
                        self._cond.wait(until - now)
                        if self._lingers(linger, limit, time.monotonic()):
                            continue  # woken early (a progress tick is not due): wait on
                    if self._stopping and not self._queue and not self._held:
                        break
                    ops = [self._queue.popleft() for _ in range(min(limit, len(self._queue)))]
                    self._eager -= sum(1 for op in ops if not op.lazy)
                    self._lazy_since = time.monotonic() if self._queue else None
                    if self._held and (
                        time.monotonic() >= self._next_progress
                        or self._stopping
                        or any(op.kind == "flush" for op in ops)
                    ):
                        held = list(self._held.values())
                        self._held.clear()
                        for op in held:
                            op.writer = None
                        ops = held + ops
                    running = list(self._running.values())
                now = time.monotonic()
                progress = now >= self._next_progress or any(op.kind == "flush" for op in ops)
                heartbeat = now >= self._next_heartbeat
                started = [c for c in running if c.tracked and c.started_written]
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

    def _lingers(self, linger, limit, now):
        """Whether the queue (not empty) may wait: every op in it lazy, fewer than ``limit``,
        the first one queued less than ``linger`` seconds ago, no stop, and no progress tick
        due (running tasks' progress and held starts are never kept waiting by a linger)."""
        return (
            linger > 0
            and not self._eager
            and not self._stopping
            and len(self._queue) < limit
            and self._lazy_since is not None
            and now < self._lazy_since + linger
            and not ((self._held or self._running) and now >= self._next_progress)
        )

    def _write(self, ops, dirty, beating):
        delay = 0.05
        while True:
            try:
                transitions.apply(ops, dirty, beating)
                if self._failing_since is not None:
                    logger.warning(
                        "usertasks: database writable again after %.1fs", time.monotonic() - self._failing_since
                    )
                    self._failing_since = None
                break
            except Exception as exc:
                if not isinstance(exc, (OperationalError, InterfaceError)) or not _transient(exc):
                    if len(ops) > 1:  # a statement the database refuses: isolate it
                        for op in ops:
                            self._write([op], (), ())
                        return
                    logger.exception("usertasks: dropped a state change the database refused: %r", ops)
                    for op in ops:
                        op.error = exc
                    break
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    logger.warning("usertasks: cannot write task states (%s); retrying until it works", exc)
                else:
                    logger.debug("usertasks: still cannot write task states: %s", exc)
                self._close()
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        for op in ops:
            op.done.set()
        self.batches += 1

    def _close(self):
        try:
            connections[router.db_for_write(UserTaskStatus)].close()
        except Exception as exc:  # a connection that is gone already
            logger.debug("usertasks writer: closing the connection: %s", exc)


def _seconds(value):
    """A linger setting as seconds in [0, 1]; anything else (reported by ``usertasks.E008``)
    means no linger, so a mistyped setting cannot stop the writer."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 0.0
    return min(max(value, 0.0), 1.0)


def _transient(exc):
    """Whether a database error is an outage worth waiting out (connection lost, server gone,
    "database is locked"), as opposed to a statement the database will never accept."""
    if isinstance(exc, InterfaceError):
        return True
    text = str(exc).lower()
    refused = (
        "no such column",
        "no such table",
        "syntax error",
        "unknown column",
        "does not exist",
        "has no column",
        "datatype mismatch",
        "invalid input",
    )
    return not any(marker in text for marker in refused)


_writers = PerProcess(Writer)


def get_writer():
    """This process's writer (started on first use, and again in a forked child)."""
    return _writers.get()


def stop_writer(timeout=30):
    w = _writers.take()
    if w is not None:
        w.stop(timeout)
