"""The per-process status writer.

Every worker process has one writer thread.  Worker threads hand it state changes (``start``,
``retrying``, final states) and it applies everything that is waiting in **one transaction**
(group commit), together with the progress of every running task that changed since the last
write.  A worker thread that ends a task waits until the transaction holding its final state
has committed, so a message is acknowledged only once its outcome is durable.

Starts are deferred: the start of a run whose body need not wait for it is held until the next
progress tick (``PROGRESS_INTERVAL``), and when the run ends before then, its start and its end
become ONE guarded ``UPDATE``.  Ends that no thread waits for (only their messages'
acknowledgements do, ``usertasks.acks``) may wait up to ``WRITE_LINGER`` seconds for company, so
that the ends of many runs share a transaction; anything a thread waits for is written at once
and takes them along.  Short tasks therefore cost one statement in a shared
transaction.  The hot statements are prepared SQL (``_Statements``), not ORM querysets, which
cost ten times as much to build; on PostgreSQL a batch made only of starts and ends of ordinary
runs is ONE autocommitted statement (the updates and the INSERT of their events as
data-modifying CTEs), so it costs a single round trip, commit included.

Failures: a transient database error (connection lost, "database is locked") makes the writer
close its connection and try the same batch again with a growing pause, for as long as it
takes; a change the database refuses outright (a bug, not an outage) is retried on its own so
it cannot hold up the others, then logged and dropped.  See ``docs/guarantees.md``.
"""

import logging
import threading
import time
from collections import deque
from datetime import datetime

from django.db import InterfaceError, OperationalError, connections, router, transaction
from django.utils import timezone

from . import bulk, fanout
from .process import PerProcess
from .states import ACTIVE_STATES, State

logger = logging.getLogger("usertasks.writer")

__all__ = ["Op", "Writer", "get_writer"]


class Done:
    """A one-shot ``threading.Event`` (``set``, ``is_set``, ``wait``), for the writer's ops.

    Two of them are made per run (its start and its end); ``threading.Event`` builds a
    ``Condition`` in Python each time, this holds one lock, released by :meth:`set`."""

    __slots__ = ("_lock", "_set")

    def __init__(self):
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def set(self):
        if not self._set:
            self._set = True
            self._lock.release()

    def is_set(self):
        return self._set

    def wait(self, timeout=None):
        """``True`` once set; ``False`` if ``timeout`` seconds pass first."""
        if self._set:
            return True
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            return self._set
        self._lock.release()  # let the other waiters through
        return True


class Op:
    """One change for the writer.  ``wait()`` blocks until it is committed (or refused).

    ``lazy``: no thread waits for it (the acknowledgement of its message does, see
    ``usertasks.acks``), so the writer may hold it up to ``WRITE_LINGER`` seconds to commit more
    changes in the same transaction."""

    __slots__ = ("kind", "ctx", "at", "fields", "events", "done", "applied", "error", "start", "writer", "lazy")

    def __init__(self, kind, ctx=None, *, fields=None, events=(), lazy=False):
        self.kind = kind
        self.lazy = lazy
        self.ctx = ctx
        self.at = timezone.now()
        self.fields = fields or {}
        self.events = list(events)
        self.done = Done()
        self.applied = False
        self.error = None
        self.start = None  # an "end" that carries its run's deferred start
        self.writer = None  # set while the op is held (a deferred start)

    def wait(self, timeout=None):
        """Block until written; returns ``True`` if the change took effect."""
        writer = self.writer
        if writer is not None:
            writer.expedite(self)
        if not self.done.wait(timeout):
            raise TimeoutError(f"usertasks: write {self.kind} not done within {timeout}s")
        return self.applied


class Writer:
    def __init__(self):
        self._cond = threading.Condition()
        self._queue = deque()
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
        # Callables run on every tick with the running contexts (abort checks).  A poller also
        # has ``due(now)``, the seconds until it wants to run again (the thread sleeps no longer
        # while tasks run), and ``active``, whether it has something to watch when none does.
        self.pollers = []
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

    def expedite(self, op):
        """Write a held start now (someone waits for it)."""
        with self._cond:
            if self._held.get(id(op.ctx)) is op:
                del self._held[id(op.ctx)]
                op.writer = None
                self._append(op)

    def flush(self, timeout=30):
        """Write everything submitted so far, and all pending progress; wait for it."""
        return self.submit(Op("flush")).wait(timeout)

    def wake(self):
        """Wake the thread: a poller has become :attr:`active` (prefetched messages to watch),
        so the thread, which may be sleeping with no deadline, runs its pollers and keeps ticking."""
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
                        for poller in self.pollers:
                            if self._running or poller.active:
                                due = poller.due(now)
                                wait = min(wait, due) if wait is not None else due
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
                        time.monotonic() >= self._next_progress or self._stopping
                        or any(op.kind == "flush" for op in ops)
                    ):
                        held = list(self._held.values())
                        self._held.clear()
                        for op in held:
                            op.writer = None
                        ops = held + ops
                    running = list(self._running.values())
                for poller in self.pollers:
                    try:
                        poller(running)
                    except Exception:  # a poller must not hold up the writes
                        logger.exception("usertasks writer: poller %r failed", poller)
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
            linger > 0 and not self._eager and not self._stopping and len(self._queue) < limit
            and self._lazy_since is not None and now < self._lazy_since + linger
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
        from .models import UserTaskStatus

        try:
            connections[router.db_for_write(UserTaskStatus)].close()
        except Exception:
            pass

    # -- SQL -----------------------------------------------------------------------------------

    def _apply_one_statement(self, ops, rows, sql):
        """The batch as ONE statement in autocommit (see ``_one_statement``): its updates and
        their events, committed together in a single round trip."""
        plans = [PLAN[op.kind](op) for op in ops]
        events = [event for op in ops for event in (op.start.events if op.start is not None else []) + op.events]
        changed = sql.update_many_with_events(plans, events)
        _settle(ops, [POST[op.kind](rows, op, where["pk"] in changed) for op, (_, where) in zip(ops, plans)])

    def _apply(self, ops, dirty, beating):
        from .models import UserTaskStatus

        db = router.db_for_write(UserTaskStatus)
        rows = UserTaskStatus.objects.using(db)
        events = []
        applied = []
        sql = _Statements.get(connections[db])
        if not dirty and not beating and _one_statement(ops, sql.connection):
            return self._apply_one_statement(ops, rows, sql)
        with transaction.atomic(using=db):
            fanout.begin_batch()  # children's ends are counted on their containers once per batch
            # Starts and ends: one multi-row UPDATE per statement shape (starts before ends, so a
            # run's start lands before its end); everything else one by one, in order.
            results = {}
            for kinds in (("start",), ("end",)):
                group = [op for op in ops if op.kind in kinds]
                if group:
                    oks = sql.update_many([PLAN[op.kind](op) for op in group])
                    for op, ok in zip(group, oks):
                        results[id(op)] = POST[op.kind](rows, op, ok)
            for op in ops:
                ok = results[id(op)] if id(op) in results else APPLY[op.kind](rows, op, sql)
                applied.append(ok)
                if ok:
                    if op.start is not None:
                        events.extend(op.start.events)
                    events.extend(op.events)
            now = timezone.now()
            for ctx in dirty:
                sql.update(_progress(ctx, modified=now), pk=ctx.status_id, state=State.IN_PROGRESS, worker=ctx.worker)
            if beating:
                sql.update({"heartbeat": now}, pk__in=[c.status_id for c in beating], state=State.IN_PROGRESS)
            if events:
                bulk.insert(events, db)
            fanout.end_batch(rows)
        _settle(ops, applied)


def _seconds(value):
    """A linger setting as seconds in [0, 1]; anything else (reported by ``usertasks.E008``)
    means no linger, so a mistyped setting cannot stop the writer."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 0.0
    return min(max(value, 0.0), 1.0)


def _settle(ops, applied):
    """Record the outcome of each op of a committed batch (their ``done`` is set by the caller;
    a folded start is settled with its end)."""
    for op, ok in zip(ops, applied):
        op.applied = ok
        if op.kind == "start" and ok:
            op.ctx.started_written = True
        if op.start is not None:
            op.start.applied = ok
            op.start.done.set()


def _one_statement(ops, connection):
    """Whether a batch can be written as one autocommitted statement: PostgreSQL, only starts
    and ends of runs outside containers, one change per row, each with its event."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return False
    seen = set()
    for op in ops:
        ctx = op.ctx
        if op.kind not in ("start", "end") or not op.events or ctx.parent_id is not None or ctx.fanout:
            return False
        if ctx.status_id in seen:
            return False
        seen.add(ctx.status_id)
    return True


def _transient(exc):
    """Whether a database error is an outage worth waiting out (connection lost, server gone,
    "database is locked"), as opposed to a statement the database will never accept."""
    if isinstance(exc, InterfaceError):
        return True
    text = str(exc).lower()
    refused = ("no such column", "no such table", "syntax error", "unknown column", "does not exist",
               "has no column", "datatype mismatch", "invalid input")
    return not any(marker in text for marker in refused)


class _Statements:
    """Prepared guarded UPDATEs on the status table, cached per connection and shape.

    ``update(fields, **where)`` runs ``UPDATE ... SET <fields> WHERE <where>`` and returns the
    row count.  ``where`` keys: ``pk``, ``pk__in``, ``state``, ``state__in``, ``worker``.  A
    field value of :data:`NEXT_ATTEMPT` ``(n)`` stores ``max(attempts + 1, n)``."""

    _by_connection = {}

    def __init__(self, connection):
        from .models import UserTaskStatus

        self.connection = connection
        qn = connection.ops.quote_name
        self.table = qn(UserTaskStatus._meta.db_table)
        self.columns = {f.name: qn(f.column) for f in UserTaskStatus._meta.concrete_fields}
        self.columns["pk"] = self.columns["id"]
        self.greatest = "MAX" if connection.vendor == "sqlite" else "GREATEST"
        self.datetime = connection.ops.adapt_datetimefield_value
        self.cache = {}

    @classmethod
    def get(cls, connection):
        key = (id(connection), connection.alias)
        stmts = cls._by_connection.get(key)
        if stmts is None or stmts.connection is not connection:
            stmts = cls._by_connection[key] = cls(connection)
        return stmts

    def update(self, fields, **where):
        shape = (tuple(fields), tuple((k, len(v) if k.endswith("__in") else 0) for k, v in where.items()))
        sql = self.cache.get(shape)
        if sql is None:
            sets = []
            for name, value in fields.items():
                col = self.columns[name]
                if isinstance(value, NextAttempt):
                    sets.append(f"{col} = {self.greatest}({col} + 1, %s)")
                else:
                    sets.append(f"{col} = %s")
            conds = []
            for key, value in where.items():
                name, _, lookup = key.partition("__")
                col = self.columns[name]
                if lookup == "in":
                    conds.append(f"{col} IN ({', '.join(['%s'] * len(value))})")
                else:
                    conds.append(f"{col} = %s")
            sql = self._keep(shape, f"UPDATE {self.table} SET {', '.join(sets)} WHERE {' AND '.join(conds)}")
        params = [self._adapt(v) for v in fields.values()]
        for key, value in where.items():
            if key.endswith("__in"):
                params.extend(str(v) if isinstance(v, State) else v for v in value)
            else:
                params.append(self._adapt(value))
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount

    def update_many(self, plans):
        """Run many ``(fields, where)`` updates; returns, for each, whether it changed its row.

        Plans of the same shape (same fields and guards; ``pk`` and ``worker`` may differ) go
        into ONE ``UPDATE ... FROM (VALUES ...) RETURNING`` on SQLite >= 3.35 (``FROM
        unnest(...)`` on PostgreSQL), so a batch costs one round trip per shape, not one per
        task."""
        results = [False] * len(plans)
        for (names, wkey), indexes in self._shapes(plans).items():
            if len(indexes) == 1 or not self.multi_row:
                for i in indexes:
                    fields, where = plans[i]
                    results[i] = self.update(fields, **where) > 0
                continue
            sql, params = self._many(plans, names, wkey, indexes)
            changed = {row[0] for row in bulk.execute(self.connection, sql, params)}
            for i in indexes:
                results[i] = plans[i][1]["pk"] in changed
        return results

    def update_many_with_events(self, plans, events):
        """PostgreSQL: the updates of :meth:`update_many` and the INSERT of the events of the
        rows they changed, as ONE statement (data-modifying CTEs).  Run outside a transaction
        it is its own transaction: a batch costs one round trip, commit included.  ``events``:
        unsaved ``UserTaskEvent`` objects; those of rows left unchanged are not inserted.
        Returns the set of primary keys changed."""
        from .models import UserTaskEvent

        shapes = self._shapes(plans)
        fields = [f for f in UserTaskEvent._meta.concrete_fields if not f.primary_key]
        parts, params = [], []
        for n, ((names, wkey), indexes) in enumerate(shapes.items()):
            sql, p = self._many(plans, names, wkey, indexes)
            parts.append(f"u{n} AS ({sql})")
            params.extend(p)
        params.extend(bulk.columns(events, fields, self.connection))
        key = ("with_events", tuple(shapes))
        sql = self.cache.get(key)
        if sql is None:
            qn = self.connection.ops.quote_name
            names = [f"e{j}" for j in range(len(fields))]
            parts.append(f"e AS (SELECT * FROM unnest({bulk.arrays(fields, self.connection)}) AS e({', '.join(names)}))")
            changed = " UNION ALL ".join(f"SELECT {self.columns['pk']} FROM u{n}" for n in range(len(shapes)))
            status = next(j for j, f in enumerate(fields) if f.name == "status")
            sql = (
                f"WITH {', '.join(parts)} INSERT INTO {qn(UserTaskEvent._meta.db_table)} "
                f"({', '.join(qn(f.column) for f in fields)}) SELECT {', '.join(names)} FROM e "
                f"WHERE e{status} IN ({changed}) RETURNING {qn(fields[status].column)}"
            )
            self._keep(key, sql)
        return {row[0] for row in bulk.execute(self.connection, sql, params)}

    def _keep(self, key, sql):
        """Cache a statement's text (bounded: the shapes are few, but never unbounded)."""
        if len(self.cache) < 256:
            self.cache[key] = sql
        return sql

    @staticmethod
    def _shapes(plans):
        """Indexes of ``plans`` grouped by statement shape."""
        groups = {}
        for i, (fields, where) in enumerate(plans):
            wkey = tuple(
                (k, tuple(map(str, v)) if k.endswith("__in") else (str(v) if k == "state" else None))
                for k, v in where.items()
            )
            groups.setdefault((tuple(fields), wkey), []).append(i)
        return groups

    def _many(self, plans, names, wkey, indexes):
        """SQL and parameters of one multi-row UPDATE ... RETURNING pk for one shape."""
        sql = self._many_sql(names, wkey, len(indexes))
        if self.connection.vendor == "postgresql":
            params = self._many_arrays(plans, names, any(k == "worker" for k, _ in wkey), indexes)
        else:
            params = []
            for i in indexes:
                fields, where = plans[i]
                params.append(where["pk"])
                params.extend(self._adapt(v) for v in fields.values())
                if "worker" in where:
                    params.append(where["worker"])
        for key, value in wkey:
            if key.endswith("__in"):
                params.extend(value)
            elif key == "state":
                params.append(value)
        return sql, params

    def _many_arrays(self, plans, names, worker, indexes):
        """PostgreSQL: the parameters of :meth:`_many`, one array literal per column (the keys,
        each field set, the worker tokens of the guard)."""
        columns = [[plans[i][1]["pk"] for i in indexes]]
        for name in names:
            values = [plans[i][0][name] for i in indexes]
            if name == "attempts":
                values = [v.n if isinstance(v, NextAttempt) else v for v in values]
            columns.append(values)
        if worker:
            columns.append([plans[i][1]["worker"] for i in indexes])
        fields = self._fields(names, worker)
        return [bulk.literal(values, field, self.connection) for values, field in zip(columns, fields)]

    @property
    def multi_row(self):
        import sqlite3

        if self.connection.vendor == "postgresql":
            return True
        return self.connection.vendor == "sqlite" and sqlite3.sqlite_version_info >= (3, 35)

    def _many_sql(self, names, wkey, rows):
        """On PostgreSQL the rows come as one array per column (``unnest``), so the text does
        not depend on the number of rows; elsewhere as a ``VALUES`` list."""
        if self.connection.vendor == "postgresql":
            rows = 0
        key = ("many", names, wkey, rows)
        sql = self.cache.get(key)
        if sql is not None:
            return sql
        from .models import UserTaskStatus

        pg = self.connection.vendor == "postgresql"
        t = self.table  # SQLite does not take an alias on the target of UPDATE ... FROM
        worker = any(k == "worker" for k, _ in wkey)
        cols = ["k"] + [f"c{j}" for j in range(len(names))] + (["w"] if worker else [])
        width = len(cols)

        def cast(expr, name):
            if not pg:
                return expr
            field = UserTaskStatus._meta.get_field("id" if name == "pk" else name)
            return f"CAST({expr} AS {field.db_type(self.connection)})"

        sets = []
        for j, name in enumerate(names):
            col = self.columns[name]
            value = cast(f"v.c{j}", name)
            if name == "attempts":
                value = f"{self.greatest}({t}.{col} + 1, {value})"
            sets.append(f"{col} = {value}")
        if pg:
            source = f"unnest({bulk.arrays(self._fields(names, worker), self.connection)}) AS v({', '.join(cols)})"
        else:
            select = ", ".join(f"column{j + 1} AS {c}" for j, c in enumerate(cols))
            values = ", ".join(["(" + ", ".join(["%s"] * width) + ")"] * rows)
            source = f"(SELECT {select} FROM (VALUES {values}) AS vv) AS v"
        conds = [f"{t}.{self.columns['pk']} = {cast('v.k', 'pk')}"]
        for k, v in wkey:
            name, _, lookup = k.partition("__")
            if name == "pk":
                continue
            if name == "worker":
                conds.append(f"{t}.{self.columns['worker']} = v.w")
            elif lookup == "in":
                conds.append(f"{t}.{self.columns[name]} IN ({', '.join(['%s'] * len(v))})")
            else:
                conds.append(f"{t}.{self.columns[name]} = %s")
        sql = (
            f"UPDATE {t} SET {', '.join(sets)} "
            f"FROM {source} "
            f"WHERE {' AND '.join(conds)} RETURNING {t}.{self.columns['pk']}"
        )
        return self._keep(key, sql)

    def _fields(self, names, worker):
        """The fields of the columns of a multi-row UPDATE of ``names``: the key, the fields
        set, then the guard on the run's worker token if there is one."""
        key = ("fields", names, worker)
        fields = self.cache.get(key)
        if fields is None:
            from .models import UserTaskStatus

            get = UserTaskStatus._meta.get_field
            fields = self._keep(key, [get(n) for n in ("id",) + names + (("worker",) if worker else ())])
        return fields

    def _adapt(self, value):
        if isinstance(value, NextAttempt):
            return value.n
        if isinstance(value, datetime):
            return self.datetime(value)
        if isinstance(value, State):
            return value.value
        return value


class NextAttempt:
    """``attempts = max(attempts + 1, n)``: every start counts, and never below Dramatiq's count."""

    __slots__ = ("n",)

    def __init__(self, n):
        self.n = n


def _progress(ctx, **extra):
    completed, total, message = ctx.snapshot()
    if ctx.fanout:  # a container's steps are its children's (usertasks.fanout)
        fields = {} if message is None else {"message": message}
        fields.update(extra)
        return fields
    fields = dict(extra, completed_steps=completed)
    if total is not None:
        fields["total_steps"] = total
    if message is not None:
        fields["message"] = message
    return fields


def _start_fields(ctx, at):
    return {
        "state": State.IN_PROGRESS, "attempts": NextAttempt(ctx.attempt), "started": at, "heartbeat": at,
        "modified": at, "worker": ctx.worker, "eta": None,
    }


def _plan_start(op):
    ctx = op.ctx
    fields = _start_fields(ctx, op.at)
    fields.update(_progress(ctx))
    return fields, {"pk": ctx.status_id, "state__in": ACTIVE_STATES}


def _post_start(rows, op, ok):
    return True if ok else _start_refused(rows, op.ctx)


def _apply_start(rows, op, sql):
    fields, where = _plan_start(op)
    return _post_start(rows, op, sql.update(fields, **where) > 0)


def _start_refused(rows, ctx):
    state = rows.filter(pk=ctx.status_id).values_list("state", flat=True).first()
    if state is None:
        logger.warning("usertasks: row %s of message %s is missing; the task runs untracked", ctx.status_id, ctx.message_id)
    else:
        logger.info("usertasks: task %s is already %s; stopping it", ctx.status_id, state)
        ctx.request_abort()
    ctx.row_gone = True
    return False


def _plan_end(op):
    """Retrying or a final state, for the attempt this context runs; with ``op.start``, the
    run's start too, in the same statement."""
    ctx = op.ctx
    fields = _start_fields(ctx, op.start.at) if op.start is not None else {}
    fields.update(op.fields)
    fields.update(_progress(ctx, modified=op.at))
    if op.fields.get("state") in (State.SUCCEEDED, State.FAILED, State.CANCELED):
        fields.setdefault("finished", op.at)
        fields["unique_key"] = None
    else:
        fields["worker"] = ""
    if op.start is not None:
        return fields, {"pk": ctx.status_id, "state__in": ACTIVE_STATES}
    return fields, {"pk": ctx.status_id, "state": State.IN_PROGRESS, "worker": ctx.worker}


def _apply_end(rows, op, sql):
    fields, where = _plan_end(op)
    return _post_end(rows, op, sql.update(fields, **where) > 0)


def _post_end(rows, op, n):
    ctx = op.ctx
    if op.start is not None:
        if n:
            ctx.started_written = True
        else:
            _start_refused(rows, ctx)
    if n and (ctx.parent_id is not None or ctx.fanout):  # counters of the container, in this same transaction
        if ctx.fanout:
            fanout.body_ended(rows, ctx, op.fields.get("state"))
        if ctx.parent_id is not None:
            fanout.child_ended(rows, ctx.parent_id, ctx.status_id, op.fields.get("state"))
    return bool(n)


def _apply_update(rows, op, sql):
    """A guarded update not tied to a run: ``fields`` where ``op.events`` ... (used by the reaper)."""
    where = op.fields.pop("_where")
    parent_id = op.fields.pop("_parent", None)  # a child ending here is counted on its container
    n = rows.filter(**where).update(modified=op.at, **op.fields)
    if n and parent_id is not None and op.fields.get("state") in (State.SUCCEEDED, State.FAILED, State.CANCELED):
        fanout.child_ended(rows, parent_id, where.get("pk"), op.fields["state"])
    return bool(n)


def _apply_body_done(rows, op, sql):
    return fanout.body_done(rows, op)


PLAN = {"start": _plan_start, "end": _plan_end}
POST = {"start": _post_start, "end": _post_end}

APPLY = {
    "start": _apply_start,
    "end": _apply_end,
    "update": _apply_update,
    "body_done": _apply_body_done,
    "flush": lambda rows, op, sql: True,
}


_writers = PerProcess(Writer)


def get_writer():
    """This process's writer (started on first use, and again in a forked child)."""
    return _writers.get()


def stop_writer(timeout=30):
    w = _writers.take()
    if w is not None:
        w.stop(timeout)
