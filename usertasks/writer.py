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
it cannot hold up the others; a refused final end of a run is stored as Failed with the
reason (``transitions.refused``), anything else refused is logged and dropped.

No silent stall: the writer's own connection gets bounded waits (:func:`bounded_options`:
connect timeout, TCP keepalives, statement or socket timeouts), and a watchdog thread logs at
ERROR any attempt at a batch that runs past ``WRITE_TIMEOUT`` and drops its connection, so the
attempt fails and the writer retries on a fresh one.  See ``docs/guarantees.md``.
"""

import logging
import math
import os
import socket
import threading
import time
from collections import deque

from django.db import InterfaceError, OperationalError, connections, router

from . import transitions
from .models import UserTaskStatus
from .process import PerProcess
from .signals import send_task_finished
from .states import State

logger = logging.getLogger("usertasks.writer")

__all__ = ["Writer", "bounded_options", "get_writer", "stop_writer"]


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
        self._attempt = None  # [began, connection wrapper, changes, broken] of the write under way
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usertasks-writer", daemon=True)
        self._thread.start()
        self._watchdog = threading.Thread(target=self._watch, name="usertasks-writer-watchdog", daemon=True)
        self._watchdog.start()

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
            self._stopped.set()

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
                self._apply(ops, dirty, beating)
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
                    self._refused(ops, exc)
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

    def _refused(self, ops, exc):
        """The database refused a change outright.  The final end of a run is stored as Failed
        with the reason instead (``transitions.refused``), so the task never stays unfinished;
        anything else is logged and dropped."""
        for op in ops:
            op.error = exc
            fallback = transitions.refused(op, exc)
            if fallback is None:
                logger.error("usertasks: dropped a state change the database refused: %r", op, exc_info=exc)
                continue
            logger.error(
                "usertasks: the database refused the end of task %s (%s); storing it as Failed",
                op.ctx.status_id,
                exc,
                exc_info=exc,
            )
            try:
                self._apply([fallback], (), ())
            except Exception as again:
                logger.error(
                    "usertasks: the database refused the Failed end of task %s too: %s", op.ctx.status_id, again
                )
                continue
            if fallback.applied:
                try:
                    send_task_finished(op.ctx.status_id, State.FAILED)
                except Exception as failed:  # pragma: no cover - receivers' errors are logged by the signal
                    logger.error("usertasks: task_finished for task %s: %s", op.ctx.status_id, failed)

    def _apply(self, ops, dirty, beating):
        """One attempt at a batch, watched: connecting (with the bounded waits of
        :func:`bounded_options`) and writing must end within ``WRITE_TIMEOUT`` seconds, or the
        watchdog drops the connection."""
        db = router.db_for_write(UserTaskStatus)
        wrapper = connections[db]
        self._attempt = [time.monotonic(), wrapper, len(ops), False]
        try:
            if wrapper.connection is None:
                _bound(wrapper, connections.settings[db])
                wrapper.ensure_connection()
            transitions.apply(ops, dirty, beating, using=db)
        finally:
            self._attempt = None

    def _watch(self):
        """The watchdog's thread: a batch attempt running longer than ``WRITE_TIMEOUT`` is logged
        at ERROR and its connection dropped (the attempt then fails, and the writer retries on a
        fresh connection)."""
        from .conf import app_settings

        while not self._stopped.is_set():
            try:
                timeout = app_settings.WRITE_TIMEOUT
                timeout = None if timeout is None else float(timeout)
            except (TypeError, ValueError):
                timeout = None
            self._stopped.wait(1.0 if timeout is None else min(1.0, max(timeout / 4, 0.05)))
            attempt = self._attempt
            if timeout is None or attempt is None or attempt[3]:
                continue
            began, wrapper, count, _ = attempt
            stuck = time.monotonic() - began
            if stuck < timeout:
                continue
            attempt[3] = True  # once per attempt
            action = _break(wrapper.connection)
            logger.error(
                "usertasks: a status write (%d change(s)) has been stuck for %.1fs (WRITE_TIMEOUT %ss); %s",
                count,
                stuck,
                timeout,
                action or "it cannot be interrupted: waiting for the database's own timeouts",
            )

    def _close(self):
        try:
            connections[router.db_for_write(UserTaskStatus)].close()
        except Exception as exc:  # a connection that is gone already
            logger.debug("usertasks writer: closing the connection: %s", exc)


#: TCP keepalives of the writer's PostgreSQL connections (libpq parameters), where the database
#: ``OPTIONS`` set none: probes after 30 s of silence, every 10 s, 3 unanswered ones drop it.
PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def bounded_options(vendor, options, write_timeout, connect_timeout):
    """The ``OPTIONS`` of the writer's connection to a database of ``vendor``: the site's own,
    plus bounded waits where they set none.  PostgreSQL: ``connect_timeout``, TCP keepalives and
    ``statement_timeout`` = ``write_timeout``; MySQL: ``connect_timeout``, ``read_timeout`` and
    ``write_timeout``.  ``None`` when nothing is to be added (SQLite; a PostgreSQL connection
    pool, whose connections are shared with other threads)."""
    extra = {}
    if vendor == "postgresql":
        if "pool" in options:
            return None
        if connect_timeout:
            extra["connect_timeout"] = max(2, math.ceil(connect_timeout))
        extra.update(PG_KEEPALIVES)
        given = options.get("options") or ""
        if write_timeout and "statement_timeout" not in given:
            extra["options"] = f"{given} -c statement_timeout={math.ceil(write_timeout * 1000)}".strip()
    elif vendor == "mysql":
        if connect_timeout:
            extra["connect_timeout"] = math.ceil(connect_timeout)
        if write_timeout:
            extra["read_timeout"] = extra["write_timeout"] = math.ceil(write_timeout)
    extra = {k: v for k, v in extra.items() if k == "options" or k not in options}
    return dict(options, **extra) if extra else None


def _bound(wrapper, base):
    """Give the writer thread's own connection wrapper the settings of :func:`bounded_options`
    before it connects (a copy: the other threads' connections keep the site's settings)."""
    from .conf import app_settings

    try:
        write_timeout = app_settings.WRITE_TIMEOUT
        write_timeout = None if write_timeout is None else float(write_timeout)
        connect_timeout = app_settings.CONNECT_TIMEOUT
        connect_timeout = None if connect_timeout is None else float(connect_timeout)
    except (TypeError, ValueError):
        write_timeout = connect_timeout = None
    options = bounded_options(wrapper.vendor, base.get("OPTIONS") or {}, write_timeout, connect_timeout)
    wrapper.settings_dict = base if options is None else dict(base, OPTIONS=options)


def _break(raw):
    """Make the I/O of the raw DB-API connection ``raw`` fail now, from another thread: shut its
    socket down (PostgreSQL, MySQL) or interrupt it (SQLite).  What was done, for the log
    (``None``: nothing could be)."""
    if raw is None:
        return None  # still connecting: the connect timeout bounds it
    interrupt = getattr(raw, "interrupt", None)
    if interrupt is not None and raw.__class__.__module__.startswith("sqlite3"):
        interrupt()  # ends a running statement; a wait for a lock ends with the busy timeout
        return "interrupting it (a wait for a lock ends with SQLite's busy timeout), then retrying"
    fd = None
    try:
        pgconn = getattr(raw, "pgconn", None)  # psycopg 3
        if pgconn is not None:
            fd = pgconn.socket
        elif getattr(raw, "_sock", None) is not None:  # PyMySQL
            fd = raw._sock.fileno()
        elif hasattr(raw, "fileno"):  # psycopg2, mysqlclient
            fd = raw.fileno()
    except Exception as exc:
        logger.debug("usertasks writer: no socket to break: %s", exc)
    if fd is None or fd < 0:
        return None
    try:
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()
    except OSError as exc:
        logger.debug("usertasks writer: could not shut the connection down: %s", exc)
        return None
    return "dropping its database connection and retrying on a fresh one"


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
