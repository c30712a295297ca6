"""The SQL of the hot paths, in one place: multi-row INSERTs (``send_many_for``, fan-out children,
the writer's events), the writer's guarded multi-row UPDATEs (:class:`Statements`), the counter
UPDATE of a container (:func:`count_children`), and :func:`execute`, which runs them as prepared
statements on PostgreSQL.  Which changes are made, and when, is ``usertasks.transitions``' part.

``QuerySet.bulk_create`` prepares every value of every row through its field (a ``UUIDField``,
a ``JSONField``, time zones for each ``DateTimeField``): for thousands of rows that share most
of their values, that costs more than the database.  :func:`insert` prepares a value only when
it differs from the same column's value in the previous row, and sends the rows as one
``INSERT ... SELECT * FROM unnest(<one array per column>) RETURNING pk`` on PostgreSQL (a
statement whose text does not grow with the rows) or ``INSERT ... VALUES (...), (...)
RETURNING pk`` per batch on SQLite.
"""

from __future__ import annotations

import itertools
import logging
import operator
import re
import sqlite3
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import DatabaseError, OperationalError, connections

from .states import State

__all__ = [
    "MAX_COUNT",
    "NextAttempt",
    "Statements",
    "arrays",
    "columns",
    "count_children_sql",
    "execute",
    "insert",
    "storable",
    "supported",
]

logger = logging.getLogger("usertasks.db")

_UNSET = object()
#: Set when the server refused a prepared statement (a pooler that cannot keep them): from then
#: on this process binds parameters on the client again.
_prepare_failed = False


_SURROGATES = re.compile("[\ud800-\udfff]")
#: The largest count a 64-bit counter column stores (steps, totals).
MAX_COUNT = 2**63 - 1


def storable(text: str) -> str:
    """``text`` as every supported database stores it: NUL characters (PostgreSQL refuses them)
    and lone surrogates (no encoding has them) become U+FFFD."""
    if text.isascii():
        return text.replace("\x00", "\ufffd") if "\x00" in text else text
    try:
        text.encode()
    except UnicodeEncodeError:
        text = _SURROGATES.sub("\ufffd", text)
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def execute(connection, sql, params):
    """Run ``sql`` (``%s`` placeholders) on a Django connection and return its rows.

    On PostgreSQL through psycopg 3 the parameters are bound by the server and the statement is
    prepared once per connection (``USERTASKS["PREPARED_STATEMENTS"]``; off when the database
    ``OPTIONS`` say ``"prepare_threshold": None`` explicitly): the statements of this module and of the
    writer keep the same text whatever the number of rows, so the server parses and plans each
    of them once, and the client quotes no value into the SQL.  Elsewhere, with preparation
    off, and while Django logs the connection's queries (``DEBUG``, ``CaptureQueriesContext``),
    an ordinary cursor of the connection runs it."""
    raw = _preparing(connection)
    if raw is None:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
    import psycopg

    # Django leaves psycopg's automatic preparation off (threshold None), and psycopg then
    # prepares nothing, even on request: lift it for this statement only, so the connection's
    # other queries keep the site's setting.
    threshold = raw.prepare_threshold
    raw.prepare_threshold = 0
    try:
        with connection.wrap_database_errors, psycopg.Cursor(raw) as cursor:
            cursor.execute(_binary_arrays(sql, params), params, prepare=True)
            return cursor.fetchall() if cursor.description else []
    except DatabaseError as exc:
        if not isinstance(exc.__cause__, _POOLER_ERRORS):
            raise
        _refused(exc)
        if connection.in_atomic_block:
            # The transaction is aborted: the caller (the writer) tries it again, unprepared.
            raise OperationalError("usertasks: prepared statement refused; retrying without") from exc
    finally:
        raw.prepare_threshold = threshold
    return execute(connection, sql, params)


_binary_sql: dict[tuple[str, tuple[bool, ...]], str] = {}


def _binary_arrays(sql, params):
    """``sql`` with the placeholders of list parameters turned into ``%b``: psycopg dumps an
    array in binary format in C, and in text format in Python, about 4 µs per timestamp."""
    mask = tuple(type(p) is list for p in params)
    key = (sql, mask)
    out = _binary_sql.get(key)
    if out is None:
        parts = sql.split("%s")
        if True not in mask or "%%" in sql or len(parts) != len(params) + 1:
            out = sql
        else:
            out = parts[0] + "".join(("%b" if binary else "%s") + part for binary, part in zip(mask, parts[1:]))
        if len(_binary_sql) > 512:
            _binary_sql.clear()
        _binary_sql[key] = out
    return out


def _preparing(connection):
    """The psycopg 3 connection to prepare statements on, or ``None``."""
    if _prepare_failed or connection.vendor != "postgresql" or connection.queries_logged:
        return None
    from .conf import app_settings

    if not app_settings.PREPARED_STATEMENTS:
        return None
    options = connection.settings_dict.get("OPTIONS") or {}
    if "prepare_threshold" in options and options["prepare_threshold"] is None:
        return None  # turned off for the whole site (Django's own default is None, unless set)
    connection.ensure_connection()
    raw = connection.connection
    return raw if hasattr(raw, "prepare_threshold") else None  # psycopg 3, not psycopg2


def _refused(exc):
    global _prepare_failed
    _prepare_failed = True
    logger.warning(
        "usertasks: the database refused a prepared statement (%s); binding parameters on the client from now "
        "on.  Behind a connection pooler that cannot keep prepared statements, set "
        "USERTASKS['PREPARED_STATEMENTS'] = False.",
        exc.__cause__,
    )


def _pooler_errors():
    try:
        from psycopg import errors
    except ImportError:
        return ()
    # "prepared statement does not exist" / "already exists", and a Bind that does not match
    # the statement of that name: another server connection of a transaction-mode pooler.
    return (errors.InvalidSqlStatementName, errors.DuplicatePreparedStatement, errors.ProtocolViolation)


_POOLER_ERRORS = _pooler_errors()


def supported(connection):
    """Whether :func:`insert` can return the new primary keys on this connection."""
    if connection.vendor == "postgresql":
        return True
    return connection.vendor == "sqlite" and sqlite3.sqlite_version_info >= (3, 35)


def insert(objs, using):
    """Insert unsaved instances of one model (with an automatic primary key) and set their
    primary keys.  Falls back to ``bulk_create`` where ``RETURNING`` is not available (the
    caller then finds ``pk`` unset on backends that cannot return ids)."""
    if not objs:
        return objs
    model = type(objs[0])
    connection = connections[using]
    if not supported(connection):
        return model._default_manager.using(using).bulk_create(objs)
    opts = model._meta
    pk = opts.pk
    fields = [f for f in opts.concrete_fields if f is not pk]
    qn = connection.ops.quote_name
    head = f"INSERT INTO {qn(opts.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    pg = connection.vendor == "postgresql"
    # PostgreSQL: one array per column, so the statement's text (and its parsing) does not
    # depend on the number of rows.
    size = 5000 if pg else max(1, min(500, connection.ops.bulk_batch_size(fields, objs)))
    for start in range(0, len(objs), size):
        chunk = objs[start : start + size]
        if pg:
            params = columns(chunk, fields, connection)
            sql = f"{head}SELECT * FROM unnest({arrays(fields, connection)}) RETURNING {qn(pk.column)}"
        else:
            params = _values(chunk, fields, connection)
            sql = f"{head}VALUES {', '.join([row] * len(chunk))} RETURNING {qn(pk.column)}"
        ids = [r[0] for r in execute(connection, sql, params)]
        for obj, value in zip(chunk, ids):
            obj.pk = value
            obj._state.adding = False
            obj._state.db = using
    return objs


_arrays: dict[tuple[Any, ...], str] = {}


def arrays(fields, connection):
    """``%s::<type>[], ...``: one array parameter per field, for ``unnest(...)`` on PostgreSQL.
    Cached: a foreign key's ``db_type()`` builds a field of its target's type on every call."""
    key = (tuple(fields), connection.vendor)
    text = _arrays.get(key)
    if text is None:
        if len(_arrays) > 256:
            _arrays.clear()
        text = _arrays[key] = ", ".join(f"%s::{f.db_type(connection)}[]" for f in fields)
    return text


def columns(objs, fields, connection):
    """The database values of ``fields`` of ``objs``, one array per field (``unnest``), each as
    :func:`literal` makes it."""
    return [literal(values, field, connection) for values, field in zip(_columns(objs, fields, connection), fields)]


def literal(values, field, connection):
    """PostgreSQL: ``values`` (database values of ``field``) as the text of an array literal,
    for a ``%s::<type>[]`` parameter.  psycopg dumps a Python list element by element in Python
    (about 0.6 µs each, in binary); this is a few string operations per column.  Types it does
    not know are left as the list, which psycopg dumps."""
    kind = _kind(field, connection)
    if kind is None:
        return values
    n = len(values)
    if n > 1 and values.count(values[0]) == n and len(set(map(type, values))) == 1:
        # One value for every row (state, user, time, options... of a batch): written once.
        item = literal(values[:1], field, connection)[1:-1]
        return "{" + ",".join([item] * n) + "}"
    items: Iterable[str]
    if kind == "int":
        # int.__repr__ in C, also for psycopg's Int2/Int4/Int8 wrappers (Django's integer values
        # on psycopg 3), whose own __str__ is Python.
        if None in values:
            items = ["NULL" if v is None else int.__repr__(v) for v in values]
        else:
            items = map(int.__repr__, values)
    elif kind == "text":
        items = ["NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values]
    elif kind == "datetime":
        items = ["NULL" if v is None else v.isoformat() for v in values]
    elif kind == "bool":
        items = ["NULL" if v is None else ("t" if v else "f") for v in values]
    elif kind == "uuid":
        items = ["NULL" if v is None else str(v) for v in values]
    else:  # jsonb: psycopg's Jsonb wrapper (Django's adapt_json_value), or JSON text
        items = []
        for v in values:
            if v is None:
                items.append("NULL")
                continue
            text = v.dumps(v.obj) if hasattr(v, "dumps") and hasattr(v, "obj") else str(v)
            items.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(items) + "}"


_kinds: dict[tuple[Any, str], str | None] = {}


def _kind(field, connection):
    """How :func:`literal` writes values of ``field``: ``int``, ``text``, ``datetime``, ``bool``,
    ``uuid``, ``json``, or ``None`` (left to psycopg)."""
    key = (field, connection.vendor)
    kind = _kinds.get(key, _UNSET)
    if kind is _UNSET:
        db_type = (field.db_type(connection) or "").lower()
        if db_type in ("bigint", "integer", "smallint", "bigserial", "serial", "smallserial"):
            kind = "int"
        elif db_type == "text" or db_type.startswith(("varchar", "character varying")):
            kind = "text"
        elif db_type == "timestamp with time zone":
            kind = "datetime"
        else:
            kind = {"boolean": "bool", "uuid": "uuid", "jsonb": "json"}.get(db_type)
        if len(_kinds) > 256:
            _kinds.clear()
        _kinds[key] = kind
    return kind


def _values(objs, fields, connection):
    """The database values of ``fields`` of ``objs``, row after row (see :func:`_columns`)."""
    return list(itertools.chain.from_iterable(zip(*_columns(objs, fields, connection))))


def _plain_text():
    from django.db import models

    return (models.CharField, models.TextField)


_PLAIN_TEXT = _plain_text()


def _columns(objs, fields, connection):
    """The database values of ``fields`` of ``objs``, one list per field.  The raw values are
    read with one ``attrgetter`` call per row; a column whose rows share one value (user, actor,
    time, options...) is prepared once, and in the others a value is prepared only when it
    differs from the previous row's.  A field stamped on save (``auto_now``) gets one time for
    the whole batch."""
    if not objs:
        return [[] for _ in fields]
    for field in fields:
        if _stamped(field):
            stamp = field.pre_save(objs[0], True)
            for obj in objs[1:]:
                setattr(obj, field.attname, stamp)
    get = operator.attrgetter(*(f.attname for f in fields))
    raws = [get(obj) for obj in objs] if len(fields) > 1 else [(get(obj),) for obj in objs]
    columns = []
    n = len(objs)
    for field, column in zip(fields, zip(*raws)):
        prep = field.get_db_prep_save
        first = column[0]
        types = set(map(type, column))
        if len(types) == 1 and column.count(first) == n:
            columns.append([prep(first, connection=connection)] * n)
            continue
        if types == {str} and type(field) in _PLAIN_TEXT:
            columns.append(list(column))  # Django stores a str of a plain text field as it is
            continue
        values = []
        previous, value = _UNSET, None
        for raw in column:
            if raw is not previous and (type(raw) is not type(previous) or raw != previous):
                previous, value = raw, prep(raw, connection=connection)
            values.append(value)
        columns.append(values)
    return columns


def insert_with_event(obj, event, using):
    """PostgreSQL: insert ``obj`` (an unsaved row with an automatic primary key) and ``event``
    (an unsaved row of a model with a foreign key to ``obj``'s, filled in by the statement) in
    ONE statement (a data-modifying CTE); run outside a transaction it commits on its own, in
    one round trip.  Sets ``obj.pk`` and the event's foreign key; the event's own id is not
    read back."""
    connection = connections[using]
    qn = connection.ops.quote_name
    row_fields = [f for f in obj._meta.concrete_fields if not f.primary_key]
    event_fields = [f for f in event._meta.concrete_fields if not f.primary_key]
    link = next(f for f in event_fields if f.is_relation and f.related_model is type(obj))
    values = []
    for f in row_fields:
        raw = f.pre_save(obj, True) if _stamped(f) else getattr(obj, f.attname)
        values.append(f.get_db_prep_save(raw, connection=connection))
    select = []
    for f in event_fields:
        if f is link:
            select.append(f"s.{qn(obj._meta.pk.column)}")
        else:
            select.append(f"%s::{f.db_type(connection)}")
            values.append(f.get_db_prep_save(getattr(event, f.attname), connection=connection))
    pk = qn(obj._meta.pk.column)
    sql = (
        f"WITH s AS (INSERT INTO {qn(obj._meta.db_table)} ({', '.join(qn(f.column) for f in row_fields)}) "
        f"VALUES ({', '.join(['%s'] * len(row_fields))}) RETURNING {pk}), "
        f"e AS (INSERT INTO {qn(event._meta.db_table)} ({', '.join(qn(f.column) for f in event_fields)}) "
        f"SELECT {', '.join(select)} FROM s) SELECT {pk} FROM s"
    )
    obj.pk = execute(connection, sql, values)[0][0]
    obj._state.adding = False
    obj._state.db = using
    setattr(event, link.attname, obj.pk)
    return obj


def _stamped(field):
    """A field whose value ``pre_save`` sets (``auto_now``, ``auto_now_add``)."""
    return getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False)


# -- the writer's guarded UPDATEs ---------------------------------------------------------------


class Statements:
    """Prepared guarded UPDATEs on the status table, cached per connection and shape.

    ``update(fields, **where)`` runs ``UPDATE ... SET <fields> WHERE <where>`` and returns the
    row count.  ``where`` keys: ``pk``, ``pk__in``, ``state``, ``state__in``, ``state__notin``,
    ``worker``.  A
    field value of :data:`NEXT_ATTEMPT` ``(n)`` stores ``max(attempts + 1, n)``."""

    _by_connection: dict[tuple[int, str], Statements] = {}

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
        listed = ("__in", "__notin")
        shape = (tuple(fields), tuple((k, len(v) if k.endswith(listed) else 0) for k, v in where.items()))
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
                if lookup in ("in", "notin"):
                    op = "IN" if lookup == "in" else "NOT IN"
                    conds.append(f"{col} {op} ({', '.join(['%s'] * len(value))})")
                else:
                    conds.append(f"{col} = %s")
            sql = self._keep(shape, f"UPDATE {self.table} SET {', '.join(sets)} WHERE {' AND '.join(conds)}")
        params = [self._adapt(v) for v in fields.values()]
        for key, value in where.items():
            if key.endswith(listed):
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
            changed = {row[0] for row in execute(self.connection, sql, params)}
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
        params.extend(columns(events, fields, self.connection))
        key = ("with_events", tuple(shapes))
        sql = self.cache.get(key)
        if sql is None:
            qn = self.connection.ops.quote_name
            names = [f"e{j}" for j in range(len(fields))]
            parts.append(f"e AS (SELECT * FROM unnest({arrays(fields, self.connection)}) AS e({', '.join(names)}))")
            changed = " UNION ALL ".join(f"SELECT {self.columns['pk']} FROM u{n}" for n in range(len(shapes)))
            status = next(j for j, f in enumerate(fields) if f.name == "status")
            sql = (
                f"WITH {', '.join(parts)} INSERT INTO {qn(UserTaskEvent._meta.db_table)} "
                f"({', '.join(qn(f.column) for f in fields)}) SELECT {', '.join(names)} FROM e "
                f"WHERE e{status} IN ({changed}) RETURNING {qn(fields[status].column)}"
            )
            self._keep(key, sql)
        return {row[0] for row in execute(self.connection, sql, params)}

    def _keep(self, key, sql):
        """Cache a statement's text (bounded: the shapes are few, but never unbounded)."""
        if len(self.cache) < 256:
            self.cache[key] = sql
        return sql

    @staticmethod
    def _shapes(plans):
        """Indexes of ``plans`` grouped by statement shape."""
        groups: dict[tuple[Any, Any], list[int]] = {}
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
        return [literal(values, field, self.connection) for values, field in zip(columns, fields)]

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
            source = f"unnest({arrays(self._fields(names, worker), self.connection)}) AS v({', '.join(cols)})"
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


# -- a container's counters ---------------------------------------------------------------------


_count_sql: dict[tuple[Any, ...], str] = {}


def count_children_sql(connection, counters, returning):
    """``UPDATE <status> SET <each of counters> = ... + %s, children_retried = ... + %s,
    completed_steps = ... + %s, total_steps = ... + %s, modified = %s, heartbeat = %s WHERE id = %s RETURNING
    <returning>``: a container's counters in one statement (``usertasks.containers.counting``).
    Cached per database vendor."""
    from .models import UserTaskStatus

    key = (connection.vendor, tuple(counters), tuple(returning))
    text = _count_sql.get(key)
    if text is None:
        qn = connection.ops.quote_name
        column = {f.attname: qn(f.column) for f in UserTaskStatus._meta.concrete_fields}
        column["pk"] = column["id"]
        adds = [
            f"{column[c]} = {column[c]} + %s" for c in (*counters, "children_retried", "completed_steps", "total_steps")
        ]
        sets = ", ".join([*adds, f"{column['modified']} = %s", f"{column['heartbeat']} = %s"])
        table = qn(UserTaskStatus._meta.db_table)
        text = _count_sql[key] = (
            f"UPDATE {table} SET {sets} WHERE {column['id']} = %s RETURNING {', '.join(column[n] for n in returning)}"
        )
    return text
