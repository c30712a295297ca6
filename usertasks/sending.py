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
from .exceptions import ArgumentsNotSerializable, EnqueueError, RerunError
from .models import EventKind, UserTaskEvent, UserTaskStatus
from .protocol import PIPELINE_CLASS, STATUS_OPTION
from .states import FINAL_STATES

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
    #: What the row stores as its input (``status.arguments``), or ``None``.
    arguments: dict[str, Any] | None = None
    rerun_of: UserTaskStatus | None = None


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
        if actor.usertask_options.get("sensitive"):
            # The key is stored: a sensitive argument must not be readable in it.
            canonical = hashlib.sha256(canonical.encode()).hexdigest()
        raw = f"{actor.actor_name}:{user.pk}:{canonical}"
    return fit_key(raw)


def fit_key(raw):
    """A dedupe key as the ``unique_key`` column holds it: ``raw`` when it fits in 255
    characters, else its start and a hash of the whole."""
    if len(raw) <= 255:
        return raw
    return raw[:190] + ":" + hashlib.sha256(raw.encode()).hexdigest()


def stored_arguments(actor, args, kwargs):
    """What the row stores of a call's input: ``{"args": [...], "kwargs": {...}}`` as sent.

    When the call was given one of the actor's ``sensitive`` arguments, the arguments are stored
    by parameter name without the sensitive ones, whose names are listed under ``"omitted"``:
    such a task cannot be run again."""
    sensitive = actor.usertask_options.get("sensitive")
    if sensitive:
        try:
            given = actor._user_signature.bind(*args, **kwargs).arguments
        except TypeError:
            given = None  # the name's formatting has already said why the call does not fit
        if given is not None:
            by_name, omitted = {}, []
            for param in actor._user_signature.parameters.values():
                if param.name not in given:
                    continue
                value = given[param.name]
                if param.kind == param.VAR_KEYWORD:
                    for key in value:
                        if key in sensitive:
                            omitted.append(key)
                        else:
                            by_name[key] = value[key]
                elif param.name in sensitive:
                    omitted.append(param.name)
                else:
                    by_name[param.name] = list(value) if param.kind == param.VAR_POSITIONAL else value
            if omitted:
                return {"args": [], "kwargs": by_name, "omitted": omitted}
    return {"args": list(args), "kwargs": dict(kwargs)}


def storable(values):
    """``values`` (stored arguments, one per call) with ``None`` in place of those JSON cannot
    hold (a broker with another encoder than JSON, a NaN that PostgreSQL refuses): the task is
    still sent, its input is not stored.  One ``json.dumps`` for the lot when all are fine."""
    try:
        json.dumps(values, allow_nan=False, separators=(",", ":"))
        return values
    except (TypeError, ValueError, OverflowError, RecursionError):
        pass
    out = []
    for value in values:
        try:
            json.dumps(value, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError, OverflowError, RecursionError):
            value = None
        out.append(value)
    return out


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
    arguments = stored_arguments(actor, args, kwargs)
    if check:
        check_encodable(actor, [message])
        (arguments,) = storable([arguments])
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
        arguments=arguments,
    )


def check_encodable(actor, messages):
    """Raise :class:`ArgumentsNotSerializable` unless the broker's encoder can encode every one
    of ``messages``.  With Dramatiq's JSON encoder, many messages are checked in one
    ``json.dumps`` (a fan-out of thousands pays one call, not one per child).  Returns ``True``
    when that one call also found them strict JSON (no ``NaN``): their arguments can be stored
    without another check (:func:`storable`)."""
    encoder = dramatiq.get_encoder()
    if len(messages) > 1 and type(encoder) is dramatiq.JSONEncoder:
        try:
            json.dumps([(m.args, m.kwargs, m.options) for m in messages], separators=(",", ":"), allow_nan=False)
            return True
        except (TypeError, ValueError, OverflowError):
            pass  # find the culprit below, and say what it is
    for message in messages:
        try:
            encoder.encode(message.asdict())
        except (TypeError, ValueError, OverflowError) as exc:
            raise ArgumentsNotSerializable(
                f"Arguments of {actor.actor_name} cannot be serialised into a message: {exc}"
            ) from exc
    return False


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
    if not check_encodable(actor, [p.message for p in prepared]):
        for p, arguments in zip(prepared, storable([p.arguments for p in prepared])):
            p.arguments = arguments
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
        "arguments": p.arguments,
        "created": now,
        "modified": now,
        "eta": now + timedelta(milliseconds=p.delay) if p.delay else None,
    }


def new_row(p, now):
    """An unsaved status row of the prepared call ``p``."""
    return UserTaskStatus(user=p.user, parent=p.parent, rerun_of=p.rerun_of, **_row_values(p, now))


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
        if p.user is not user or p.parent is not parent or p.rerun_of is not None:
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


# -- running a finished task again ------------------------------------------------------------


def rerun_call(status):
    """The actor, positional and keyword arguments to run the finished task ``status`` again;
    :class:`RerunError` saying why when it cannot be."""
    if status.state not in FINAL_STATES:
        raise RerunError(f"Only a finished task can be run again; this one is {status.state}.")
    if status.backend != "dramatiq":
        raise RerunError("Only tasks run on Dramatiq can be run again; this one was run on " + status.backend + ".")
    if status.task_class == PIPELINE_CLASS:
        raise RerunError("A pipeline cannot be run again as a whole; start a new one with pipeline().")
    arguments = status.arguments
    if arguments is None:
        raise RerunError("The input of this task was not stored, so it cannot be run again.")
    if arguments.get("omitted") if isinstance(arguments, dict) else False:
        names = ", ".join(str(n) for n in arguments["omitted"])
        raise RerunError(f"This task's sensitive arguments ({names}) were not stored, so it cannot be run again.")
    args, kwargs = (arguments.get("args"), arguments.get("kwargs")) if isinstance(arguments, dict) else (None, None)
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise RerunError("The stored input of this task is not valid, so it cannot be run again.")
    try:
        actor = dramatiq.get_broker().get_actor(status.task_class)
    except dramatiq.ActorNotFound:
        raise RerunError(
            f"The actor {status.task_class!r} is not registered on the broker any more (renamed or removed), "
            "so this task cannot be run again."
        ) from None
    if not hasattr(actor, "send_for"):
        raise RerunError(
            f"The actor {status.task_class!r} is not a user task any more, so this task cannot be run again."
        )
    return actor, tuple(args), kwargs


def _acting_user(by):
    return (
        by if by is not None and getattr(by, "pk", None) is not None and getattr(by, "is_authenticated", True) else None
    )


def rerun(status, by=None):
    """``status.rerun(by=user)``: a new task with the actor, arguments and owner of the finished
    task ``status``, sent like ``send_for()`` (a unique task identical to an active one returns
    that one); a ``rerun`` event on ``status`` records who asked.  Everything is checked before
    anything is written: :class:`RerunError` when the task cannot run again."""
    db = router.db_for_write(UserTaskStatus)
    original = UserTaskStatus.objects.using(db).select_related("user").filter(pk=status.pk).first()
    if original is None:
        raise RerunError("The task no longer exists.")
    actor, args, kwargs = rerun_call(original)
    try:
        p = prepare(actor, original.user, args, kwargs)
    except (TypeError, ValueError) as exc:
        raise RerunError(f"The stored arguments of this task no longer fit {actor.actor_name}: {exc}") from exc
    p.rerun_of = original
    with transaction.atomic(using=db):
        (row,) = send_prepared([p])
        if row.rerun_of_id == original.pk:
            detail = f"Run again as task {row.uuid}."
        else:
            detail = f"Joined the identical active task {row.uuid}."
        UserTaskEvent.objects.using(db).create(
            status_id=original.pk, kind=EventKind.RERUN, actor=_acting_user(by), detail=detail
        )
    return row
