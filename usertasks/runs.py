"""Runs of user tasks executed outside Dramatiq's workers: heartbeats and cancels for them too.

The Celery compatibility layer (``user_tasks``) runs its tasks on Celery's workers; their rows
are ``usertasks`` rows all the same.  A run registered here gets what a Dramatiq run gets from
the worker's middleware: the per-process writer keeps its heartbeat fresh (so the reaper does
not take it for lost), and the abort poller delivers a cancel to it (:attr:`Run.abort_requested`)
without a query per progress call.  State changes of such runs go through
``usertasks.transitions`` (``begin``, ``finish``, ``retrying``).

::

    run = runs.begin(status, key=task_id, worker="celery:host:pid:thread", attempt=1)
    ...
    if runs.abort_requested(status, key=task_id): ...
    runs.end(task_id)
    runs.shutdown()  # when the worker process stops
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from .abort import clear_flags, get_backend
from .context import TaskContext
from .middleware.abort import get_poller
from .writer import get_writer, stop_writer

if TYPE_CHECKING:
    from .models import UserTaskStatus

logger = logging.getLogger("usertasks")

__all__ = ["abort_requested", "begin", "clear_flag", "end", "is_running", "shutdown"]

_lock = threading.Lock()
_runs: dict[Any, TaskContext] = {}  # key -> the TaskContext of a registered run


def begin(status: UserTaskStatus, *, key: Any, worker: str = "", attempt: int = 1) -> TaskContext:
    """Register the run of ``status`` (its row is In Progress) under ``key`` (the other
    system's task id): heartbeats and cancel delivery until :func:`end`.  Returns its
    :class:`~usertasks.context.TaskContext` (``abort_requested`` tells whether a cancel came)."""
    ctx = TaskContext(status_id=status.pk, message_id=key, actor_name=status.task_class, attempt=attempt)
    if worker:
        ctx.worker = worker
    ctx.started_written = True  # heartbeats only: progress is written by the caller
    with _lock:
        _runs[key] = ctx
    get_writer().register(ctx)
    get_poller().wake()
    return ctx


def end(key: Any) -> None:
    """Stop tracking the run registered under ``key`` (no error if there is none)."""
    with _lock:
        ctx = _runs.pop(key, None)
    if ctx is not None:
        get_writer().unregister(ctx)


def is_running(key: Any) -> bool:
    """Whether a run is registered under ``key`` in this process."""
    with _lock:
        return key in _runs


def abort_requested(status: UserTaskStatus, *, key: Any = None) -> bool:
    """Whether a cancel of ``status`` was requested: from the registered run's context when
    there is one (no I/O), else from the abort flag store (``False`` if it cannot be read)."""
    with _lock:
        ctx = _runs.get(key) if key is not None else None
    if ctx is not None:
        return ctx.abort_requested
    try:
        return get_backend().is_set(status.pk)
    except Exception as exc:  # the database state decides then
        logger.info("usertasks: cannot read the abort flag of task %s: %s", status.pk, exc)
        return False


def clear_flag(status_id: int) -> None:
    """Remove the abort flag of a task that is final (errors are logged)."""
    clear_flags([status_id])


def shutdown() -> None:
    """The process stops: store what is pending (last heartbeats) and stop the writer."""
    stop_writer()
