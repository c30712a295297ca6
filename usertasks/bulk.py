"""Multi-row INSERTs for the hot paths (``send_many_for``, fan-out children, the writer's events).

``QuerySet.bulk_create`` prepares every value of every row through its field (a ``UUIDField``,
a ``JSONField``, time zones for each ``DateTimeField``): for thousands of rows that share most
of their values, that costs more than the database.  :func:`insert` prepares a value only when
it differs from the same column's value in the previous row, and sends the rows as one
``INSERT ... SELECT * FROM unnest(<one array per column>) RETURNING pk`` on PostgreSQL (a
statement whose text does not grow with the rows) or ``INSERT ... VALUES (...), (...)
RETURNING pk`` per batch on SQLite.
"""

import sqlite3

from django.db import connections

__all__ = ["insert", "supported"]

_UNSET = object()


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
    stamped = [_stamped(f) for f in fields]
    qn = connection.ops.quote_name
    head = f"INSERT INTO {qn(opts.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    pg = connection.vendor == "postgresql"
    if pg:
        # One array per column: the statement's text (and its parsing) does not depend on
        # the number of rows.
        unnest = ", ".join(f"%s::{f.db_type(connection)}[]" for f in fields)
        size = 5000
    else:
        size = max(1, min(500, connection.ops.bulk_batch_size(fields, objs)))
    last_raw = [_UNSET] * len(fields)
    last_value = [None] * len(fields)
    for start in range(0, len(objs), size):
        chunk = objs[start:start + size]
        params = []
        for obj in chunk:
            for j, field in enumerate(fields):
                raw = field.pre_save(obj, True) if stamped[j] else getattr(obj, field.attname)
                previous = last_raw[j]
                if raw is not previous and (type(raw) is not type(previous) or raw != previous):
                    last_raw[j] = raw
                    last_value[j] = field.get_db_prep_save(raw, connection=connection)
                params.append(last_value[j])
        if pg:
            width = len(fields)
            params = [params[j::width] for j in range(width)]
            sql = f"{head}SELECT * FROM unnest({unnest}) RETURNING {qn(pk.column)}"
        else:
            sql = f"{head}VALUES {', '.join([row] * len(chunk))} RETURNING {qn(pk.column)}"
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            ids = [r[0] for r in cursor.fetchall()]
        for obj, value in zip(chunk, ids):
            obj.pk = value
            obj._state.adding = False
            obj._state.db = using
    return objs


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
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        obj.pk = cursor.fetchone()[0]
    obj._state.adding = False
    obj._state.db = using
    setattr(event, link.attname, obj.pk)
    return obj


def _stamped(field):
    """A field whose value ``pre_save`` sets (``auto_now``, ``auto_now_add``)."""
    return getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False)
