"""Status rows for Celery tasks, from Celery's own messages and signals.

Publishing a task of a :class:`~user_tasks.tasks.UserTaskMixin` class writes its row, and the rows
of the canvas it belongs to: a group (``celery.group``), a chain (``celery.chain``, with a row for
each later step, written when the first step is published) or a chord (``celery.chord``, holding
the header group and the body).  Both message protocols are understood:

* protocol 2 (Celery's default): ``body = (args, kwargs, embed)``, the id, task name and group in
  the headers; a chain travels as ``embed["chain"]``, the remaining steps in reverse order;
* protocol 1: one dict body (``id``, ``task``, ``args``, ``kwargs``, ``taskset``, ``chord``,
  ``callbacks``); a chain travels as nested ``link`` callbacks.

A message whose row exists already (a retry, or a chain step or chord body written in advance)
writes nothing.
"""

import logging
import os
import socket
import threading
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db.models import F
from django.utils.dateparse import parse_datetime
from django.utils.module_loading import import_string

from usertasks import runs, transitions
from usertasks.models import EventKind, UserTaskEvent

logger = logging.getLogger("user_tasks")

#: Option of a container row named by a task's ``user_task_name`` (later names do not rename it).
NAMED = "user_task_named"

_HOST = socket.gethostname()


@dataclass
class Message:
    id: str
    task: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    group: str | None = None
    chord: dict | None = None
    chain: list = field(default_factory=list)  # later steps, in the order they run
    eta: object = None


def parse(body, headers):
    """The parts of a task message that tracking needs, for either protocol."""
    headers = headers or {}
    if isinstance(body, (tuple, list)) and len(body) == 3 and isinstance(body[2], dict):
        args, kwargs, embed = body
        chain = list(reversed(embed.get("chain") or []))
        chain.extend(_linked(embed.get("callbacks") or []))
        return Message(
            id=headers.get("id"),
            task=headers.get("task"),
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            group=headers.get("group"),
            chord=embed.get("chord"),
            chain=chain,
            eta=headers.get("eta"),
        )
    body = body or {}
    return Message(
        id=body.get("id"),
        task=body.get("task"),
        args=tuple(body.get("args") or ()),
        kwargs=dict(body.get("kwargs") or {}),
        group=body.get("taskset") or body.get("group"),
        chord=body.get("chord"),
        chain=_linked(body.get("callbacks") or []),
        eta=body.get("eta"),
    )


def _linked(callbacks):
    """Steps reached through ``link`` callbacks (how protocol 1 carries a chain)."""
    steps = []
    todo = list(callbacks)
    while todo:
        sig = todo.pop(0)
        steps.append(sig)
        todo = list((sig.get("options") or {}).get("link") or []) + todo
    return steps


def user_task_class(name):
    """The registered task called ``name`` when it is a ``UserTaskMixin``, else ``None``."""
    from celery import current_app

    task = current_app.tasks.get(name) if name else None
    if task is None and name:
        try:
            task = import_string(name)
        except ImportError:
            return None
    # UserTaskMixin marks its classes (user_tasks.tasks imports this module: no isinstance here).
    return task if getattr(task, "user_task_mixin", False) else None


def valid_user_id(arguments, task_name):
    """The ``user_id`` argument when it names an existing user; else logs why and returns ``None``."""
    if "user_id" not in arguments:
        logger.error("%s: Each invocation of a UserTaskMixin subclass must include the user_id", task_name)
        return None
    user_id = arguments["user_id"]
    User = get_user_model()
    try:
        exists = User._default_manager.filter(pk=user_id).exists()
    except (TypeError, ValueError, ValidationError):
        exists = False
    if not exists:
        logger.error("%s: Invalid user_id: %s (the task runs untracked)", task_name, user_id)
        return None
    return user_id


def describe(task, args, kwargs):
    """``(arguments dict, name, total steps)`` of a call; tolerant of chain steps whose first
    argument (the previous result) is not known yet."""
    try:
        arguments = task.arguments_as_dict(*args, **kwargs)
    except TypeError:
        arguments = _partial_arguments(task, args, kwargs)
    try:
        name = task.generate_name(arguments)
    except Exception:
        logger.exception("%s: generate_name() failed", task.name)
        name = task.name.rsplit(".", 1)[-1]
    try:
        total = int(task.calculate_total_steps(arguments) or 0)
    except Exception:
        logger.exception("%s: calculate_total_steps() failed", task.name)
        total = 1
    return arguments, str(name)[:255], max(0, total)


def _partial_arguments(task, args, kwargs):
    import inspect

    try:
        sig = inspect.signature(task.run)
        return dict(sig.bind_partial(*args, **kwargs).arguments)
    except TypeError:
        return dict(kwargs)


def _new_row(
    *,
    task_id,
    user_id,
    name,
    task_class,
    total_steps=0,
    parent=None,
    is_container=False,
    queue_name="",
    eta=None,
    notify=False,
):
    from .models import UserTaskStatus

    row = UserTaskStatus.objects.create(
        task_id=task_id,
        user_id=user_id,
        name=name,
        task_class=task_class[:128],
        total_steps=total_steps,
        parent=parent,
        is_container=is_container,
        backend="celery",
        queue_name=(queue_name or "")[:128],
        eta=eta,
        attempts=1,
        options={"notify": bool(notify)},
    )
    UserTaskEvent.objects.create(status_id=row.pk, kind=EventKind.ENQUEUED)
    if parent is not None and parent.is_container:
        _reopen(parent)
    if parent is not None:
        UserTaskStatus.objects.filter(pk=parent.pk).update(children_total=F("children_total") + 1)
        if total_steps:
            parent.increment_total_steps(total_steps)
    return row


def _reopen(container):
    """A group learns its size only as its tasks are published: when its first tasks ended
    before the next one was published, it may have ended already.  Make it active again."""
    if transitions.reopen_group(container):
        container.refresh_from_db()


def _container(task_id, kind, user_id, name, parent=None, explicit=""):
    """The row of a group, chain or chord, created when missing; named ``explicit`` (a task's
    ``user_task_name``) when given, else ``name`` until a later task of it gives one."""
    from .models import UserTaskStatus

    row = UserTaskStatus.objects.filter(task_id=task_id).first()
    if row is not None:
        _name_container(row, explicit)
        return row, False
    row = _new_row(
        task_id=task_id, user_id=user_id, name=explicit or name, task_class=kind, is_container=True, parent=parent
    )
    if explicit:
        _mark_named(row)
    return row, True


def _name_container(row, explicit):
    """The first ``user_task_name`` given to a container's tasks names it; later ones do not."""
    if explicit and not (row.options or {}).get(NAMED):
        row.set_name(explicit)
        _mark_named(row)


def _mark_named(row):
    from .models import UserTaskStatus

    row.options = dict(row.options or {}, **{NAMED: True})
    UserTaskStatus.objects.filter(pk=row.pk).update(options=row.options)


def _eta(value):
    if not value:
        return None
    if isinstance(value, str):
        return parse_datetime(value)
    return value


def track_publish(sender, body, headers, routing_key=None):
    """Write the rows for a message about to be published (``before_task_publish``)."""
    from .models import CHAIN, GROUP, UserTaskStatus

    task = user_task_class(sender)
    if task is None:
        return
    msg = parse(body, headers)
    if not msg.id or UserTaskStatus.objects.filter(task_id=msg.id).exists():
        return
    arguments, name, total = describe(task, msg.args, msg.kwargs)
    user_id = valid_user_id(arguments, sender)
    if user_id is None:
        return
    row_kwargs = {
        "user_id": user_id,
        "task_class": sender,
        "queue_name": routing_key,
        "eta": _eta(msg.eta),
        "notify": getattr(task, "notify", False),
    }
    container_name = str(msg.kwargs.get("user_task_name") or "")
    # No transaction around these writes: on SQLite a transaction that reads before it writes
    # fails at once ("database is locked") when a worker writes meanwhile, and the tasks of a
    # group or chord are published one by one while the first ones already run.
    steps = [s for s in msg.chain if s.get("task") and not s.get("subtask_type")]
    if steps:
        import uuid

        # The chain is named by the first of its tasks that gives a user_task_name.
        named = [container_name] + [str((s.get("kwargs") or {}).get("user_task_name") or "") for s in steps]
        chain, _ = _container(str(uuid.uuid4()), CHAIN, user_id, name, explicit=next(filter(None, named), ""))
        _new_row(task_id=msg.id, name=name, total_steps=total, parent=chain, **row_kwargs)
        for sig in steps:
            _chain_step(sig, chain, user_id)
        return
    if msg.chord and msg.group:
        _chord_member(task, msg, name, total, container_name, row_kwargs)
        return
    parent = None
    if msg.group:
        parent, _ = _container(msg.group, GROUP, user_id, name, explicit=container_name)
    _new_row(task_id=msg.id, name=name, total_steps=total, parent=parent, **row_kwargs)


def _chain_step(sig, chain, user_id):
    step_task = user_task_class(sig.get("task"))
    task_id = (sig.get("options") or {}).get("task_id")
    if step_task is None or not task_id:
        return
    _, name, total = describe(step_task, tuple(sig.get("args") or ()), dict(sig.get("kwargs") or {}))
    _new_row(
        task_id=task_id,
        user_id=user_id,
        name=name,
        task_class=sig["task"],
        total_steps=total,
        parent=chain,
        notify=getattr(step_task, "notify", False),
    )


def _chord_member(task, msg, name, total, container_name, row_kwargs):
    import uuid

    from .models import CHORD, GROUP, UserTaskStatus

    user_id = row_kwargs["user_id"]
    group = UserTaskStatus.objects.filter(task_id=msg.group).first()
    if group is not None:  # a later task of the header: its name may name the chord
        _name_container(group, container_name)
        if group.parent_id:
            _name_container(group.parent, container_name)
    else:
        chord, _ = _container(str(uuid.uuid4()), CHORD, user_id, name, explicit=container_name)
        group, _ = _container(msg.group, GROUP, user_id, name, parent=chord, explicit=container_name)
        body = msg.chord
        body_task = user_task_class(body.get("task"))
        body_id = (body.get("options") or {}).get("task_id")
        if body_task is not None and body_id and not UserTaskStatus.objects.filter(task_id=body_id).exists():
            _, body_name, body_total = describe(
                body_task, tuple(body.get("args") or ()), dict(body.get("kwargs") or {})
            )
            _new_row(
                task_id=body_id,
                user_id=user_id,
                name=body_name,
                task_class=body["task"],
                total_steps=body_total,
                parent=chord,
                notify=getattr(body_task, "notify", False),
            )
    _new_row(task_id=msg.id, name=name, total_steps=total, parent=group, **row_kwargs)


# -- worker side ---------------------------------------------------------------------------------


def worker_token(task):
    hostname = getattr(task.request, "hostname", None) or _HOST
    return f"celery:{hostname}:{os.getpid()}:{threading.current_thread().name}"


def register_running(status, task):
    """Heartbeats and cancel delivery for a running task (``usertasks.runs``)."""
    return runs.begin(status, key=status.task_id, attempt=(getattr(task.request, "retries", 0) or 0) + 1)


def unregister_running(task_id):
    runs.end(task_id)
