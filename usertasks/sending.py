"""Writing status rows and sending their messages once the caller's transaction commits."""

import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import dramatiq
from django.db import IntegrityError, router, transaction
from django.utils import timezone

from . import sql, transitions
from .broker import EnqueueFailed, enqueue_many
from .exceptions import ArgumentsNotSerializable, EnqueueError
from .models import EventKind, UserTaskEvent, UserTaskStatus
from .protocol import STATUS_OPTION

logger = logging.getLogger("usertasks")


@dataclass
class Prepared:
    """One call of a user task, checked and ready to be written and sent."""

    actor: Any
    user: Any
    name: str
    message: dramatiq.Message
    delay: int | None = None
    total_steps: int = 0
    parent: UserTaskStatus | None = None
    unique_key: str | None = None
    row_options: dict[str, Any] = field(default_factory=dict)
    task_class: str | None = None  # the row's ``task_class`` (default: the actor's name)


def check_user(user):
    if user is None or not getattr(user, "is_authenticated", False) or getattr(user, "pk", None) is None:
        raise ValueError("send_for() needs a saved, authenticated user; use .send() for an untracked run")


def unique_key(actor, user, args, kwargs):
    """The dedupe key of a call, or ``None`` when the task is not unique."""
    unique = actor.usertask_options.get("unique")
    if not unique:
        return None
    if callable(unique):
        key = unique(user, *args, **kwargs)
        if key is None:
            return None
        raw = f"{actor.actor_name}:{key}"
    else:
        arguments = actor.bind_arguments(args, kwargs)
        canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=repr)
        raw = f"{actor.actor_name}:{user.pk}:{canonical}"
    if len(raw) <= 255:
        return raw
    return raw[:190] + ":" + hashlib.sha256(raw.encode()).hexdigest()


def random_uuids(n):
    """``n`` random (version 4) UUIDs from ONE read of the system's random source.

    ``uuid.uuid4()`` reads it once per UUID, and every such read releases the GIL: a thread
    preparing thousands of tasks while the worker threads of its process keep the GIL busy waits
    to get it back after each one."""
    raw = os.urandom(16 * n)
    return [uuid.UUID(bytes=raw[i : i + 16], version=4) for i in range(0, 16 * n, 16)]


def _message(actor, args, kwargs, options, message_id):
    """``actor.message_with_options(...)``, with a message id chosen by the caller."""
    if message_id is None or options.get("on_failure") is not None or options.get("on_success") is not None:
        message = actor.message_with_options(args=args, kwargs=kwargs, **options)
        return message if message_id is None else message.copy(message_id=message_id)
    return dramatiq.Message(
        queue_name=actor.queue_name,
        actor_name=actor.actor_name,
        args=args,
        kwargs=kwargs or {},
        options=options,
        message_id=message_id,
    )


def prepare(actor, user, args, kwargs, *, delay=None, parent=None, options=None, message_id=None, check=True):
    """Check everything that can be checked before a write: user, arguments, name, encoding.
    ``message_id``: the message's id (default: a new one; see :func:`prepare_many`).
    ``check=False`` leaves the encoding to the caller (:func:`check_encodable`)."""
    check_user(user)
    args = tuple(args)
    name = actor.task_name(args, kwargs)
    message = _message(actor, args, kwargs, dict(options or {}), message_id)
    if check:
        check_encodable(actor, [message])
    total = actor.usertask_options.get("total_steps") or 0
    if callable(total):
        total = total(**actor.bind_arguments(args, kwargs))
    row_options = {}
    for key in ("notify", "abort_grace"):
        value = actor.usertask_options.get(key)
        if isinstance(value, (set, frozenset, tuple)):
            value = sorted(str(v) for v in value)  # the row's options are JSON
        if value is not None:
            row_options[key] = value
    return Prepared(
        actor=actor,
        user=user,
        name=name,
        message=message,
        delay=delay,
        total_steps=int(total or 0),
        parent=parent,
        unique_key=unique_key(actor, user, args, kwargs),
        row_options=row_options,
    )


def check_encodable(actor, messages):
    """Raise :class:`ArgumentsNotSerializable` unless the broker's encoder can encode every one
    of ``messages``.  With Dramatiq's JSON encoder, many messages are checked in one
    ``json.dumps`` (a fan-out of thousands pays one call, not one per child)."""
    encoder = dramatiq.get_encoder()
    if len(messages) > 1 and type(encoder) is dramatiq.JSONEncoder:
        try:
            json.dumps([(m.args, m.kwargs, m.options) for m in messages], separators=(",", ":"))
            return
        except (TypeError, ValueError, OverflowError):
            pass  # find the culprit below, and say what it is
    for message in messages:
        try:
            encoder.encode(message.asdict())
        except (TypeError, ValueError, OverflowError) as exc:
            raise ArgumentsNotSerializable(
                f"Arguments of {actor.actor_name} cannot be serialised into a message: {exc}"
            ) from exc


def prepare_many(actor, user, calls, *, delay=None, parent=None, options=None):
    """:func:`prepare` for each ``(args, kwargs)`` of ``calls``, their message ids drawn together
    (:func:`random_uuids`) and their encoding checked together."""
    ids = random_uuids(len(calls))
    prepared = [
        prepare(
            actor,
            user,
            args,
            kwargs,
            delay=delay,
            parent=parent,
            options=options,
            message_id=str(message_id),
            check=False,
        )
        for (args, kwargs), message_id in zip(calls, ids)
    ]
    check_encodable(actor, [p.message for p in prepared])
    return prepared


def _row_values(p, now):
    """The values of a new row of ``p`` besides its user, its parent and its uuid."""
    return {
        "task_id": p.message.message_id,
        "task_class": p.task_class or p.actor.actor_name,
        "name": p.name,
        "queue_name": p.message.queue_name,
        "total_steps": p.total_steps,
        "unique_key": p.unique_key,
        "options": p.row_options,
        "created": now,
        "modified": now,
        "eta": now + timedelta(milliseconds=p.delay) if p.delay else None,
    }


def new_row(p, now):
    """An unsaved status row of the prepared call ``p``."""
    return UserTaskStatus(user=p.user, parent=p.parent, **_row_values(p, now))


def new_rows(prepared, now):
    """Unsaved rows of ``prepared`` (one per call, in order).

    Calls that share the first one's user and parent (``send_many_for``, a fan-out) get copies
    of its row with their own values: building a model instance runs every field's default and
    the foreign keys' descriptors, about ten times the cost of the copy, which is what a
    thousand-row INSERT otherwise spends most of its time on."""
    from django.db.models.base import ModelState

    if not prepared:
        return []
    first = new_row(prepared[0], now)
    rows = [first]
    model = type(first)
    user, parent = prepared[0].user, prepared[0].parent
    for p, row_uuid in zip(prepared[1:], random_uuids(len(prepared) - 1)):
        if p.user is not user or p.parent is not parent:
            rows.append(new_row(p, now))
            continue
        row = object.__new__(model)
        row.__dict__.update(first.__dict__)
        row.__dict__.update(_row_values(p, now), uuid=row_uuid)
        row._state = state = ModelState()
        state.fields_cache = dict(first._state.fields_cache)  # the user and parent instances
        rows.append(row)
    return rows


def _event(row, now):
    detail = f"due {row.eta.isoformat()}" if row.eta else ""
    return UserTaskEvent(status=row, kind=EventKind.ENQUEUED, created=now, detail=detail)


def send_prepared(prepared):
    """Insert the rows (one INSERT for one task, a bulk INSERT for many) in the caller's
    transaction and register the enqueue on commit.  Returns the rows, in order; a unique
    task identical to an active one returns that one instead (nothing is sent for it)."""
    db = router.db_for_write(UserTaskStatus)
    now = timezone.now()
    if len(prepared) == 1 and not prepared[0].unique_key and transaction.get_connection(db).vendor == "postgresql":
        # One task on PostgreSQL: the row and its "enqueued" event are ONE statement, which
        # outside the caller's transaction is also the whole transaction (one round trip).
        p = prepared[0]
        row = new_row(p, now)
        sql.insert_with_event(row, _event(row, now), db)
        transaction.on_commit(lambda: enqueue([(p, row)], db), using=db)
        return [row]
    rows, to_send = [], []
    with transaction.atomic(using=db):
        if len(prepared) == 1 or any(p.unique_key for p in prepared):
            for p in prepared:
                row, created = _insert_one(p, now, db)
                rows.append(row)
                if created:
                    to_send.append((p, row))
        else:
            new = sql.insert(new_rows(prepared, now), db)
            if any(r.pk is None for r in new):  # backends that do not return ids from bulk inserts
                ids = dict(
                    UserTaskStatus.objects.using(db)
                    .filter(task_id__in=[r.task_id for r in new])
                    .values_list("task_id", "pk")
                )
                for r in new:
                    r.pk = r.id = ids[r.task_id]
            sql.insert([_event(r, now) for r in new], db)
            rows = new
            to_send = list(zip(prepared, new))
        if to_send:
            transaction.on_commit(lambda: enqueue(to_send, db), using=db)
    return rows


def _insert_one(p, now, db):
    manager = UserTaskStatus.objects.using(db)
    if not p.unique_key:  # nothing can collide: no savepoint round trips
        row = new_row(p, now)
        row.save(force_insert=True, using=db)
        UserTaskEvent.objects.using(db).bulk_create([_event(row, now)])
        return row, True
    for _ in range(10):
        row = new_row(p, now)
        try:
            with transaction.atomic(using=db):
                row.save(force_insert=True, using=db)
        except IntegrityError:
            if not p.unique_key:
                raise
            same = manager.filter(unique_key=p.unique_key)
            if transaction.get_connection(db).vendor == "mysql":
                same = same.select_for_update()
            existing = same.first()
            if existing is not None:
                return existing, False
            continue  # the other task ended in between: try again
        UserTaskEvent.objects.using(db).bulk_create([_event(row, now)])
        return row, True
    raise IntegrityError(f"could not insert unique task {p.unique_key!r}")


def enqueue(pairs, db):
    """Send the messages of freshly committed rows (pipelined on Redis).  A broker failure fails
    the rows that were not sent (so no page waits for ever) and raises :class:`EnqueueError`."""
    actor = pairs[0][0].actor
    try:
        enqueue_many(actor.broker, [(p.message, p.delay, {STATUS_OPTION: row.pk}) for p, row in pairs])
    except EnqueueFailed as failure:
        exc = failure.error
        failed = [r.pk for _, r in pairs[failure.sent :]]
        transitions.fail_unsent(db, failed, exc)
        logger.error("usertasks: could not enqueue %s (%d task(s) failed): %s", actor.actor_name, len(failed), exc)
        raise EnqueueError(f"Could not send {actor.actor_name} to the broker: {exc}") from exc
