"""Celery signal handlers that keep the status rows of user tasks up to date, and the bridge
from ``usertasks.signals.task_finished`` to ``user_tasks.user_task_stopped``.

Connected when the ``user_tasks`` app is ready.  Starting a task (and the check that it was not
canceled before it started) happens in the task's ``before_start`` (see ``user_tasks.tasks``), so
that a canceled task never runs its body.
"""

import logging
import traceback as traceback_lib

from celery import current_app as celery_app
from celery.signals import (
    before_task_publish,
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    task_revoked,
    task_success,
    worker_process_shutdown,
    worker_shutdown,
)
from django.db import close_old_connections, transaction
from django.dispatch import receiver
from django.utils.functional import LazyObject, empty

from usertasks.exceptions import Aborted
from usertasks.models import EventKind
from usertasks.signals import ACTS, task_finished
from usertasks.states import State

from . import tracking, user_task_stopped
from .models import UserTaskStatus, caller_instance
from .tasks import UserTaskMixin

logger = logging.getLogger("user_tasks")
LOGGER = logger  # (django-user-tasks' name)

__all__ = ["celery_app", "create_user_task", "start_user_task", "user_task_stopped"]


def _row(task_id):
    return UserTaskStatus.objects.filter(task_id=task_id).first() if task_id else None


@before_task_publish.connect(dispatch_uid="user_tasks.publish")
def create_user_task(sender=None, body=None, headers=None, routing_key=None, **kwargs):
    """Write the status rows of a user task (and of its group, chain or chord) being published."""
    try:
        tracking.track_publish(sender, body, headers, routing_key)
    except Exception:
        logger.exception("user_tasks: could not record the publication of %s", sender)


@task_prerun.connect(dispatch_uid="user_tasks.prerun")
def start_user_task(sender=None, **kwargs):
    """Drop stale database connections before a user task runs (outside of an atomic block)."""
    if not (isinstance(sender, UserTaskMixin) or (isinstance(sender, type) and issubclass(sender, UserTaskMixin))):
        return
    try:
        in_atomic = transaction.get_connection().in_atomic_block
    except Exception:
        in_atomic = True
    if not in_atomic:
        close_old_connections()


@task_postrun.connect(dispatch_uid="user_tasks.postrun")
def user_task_ran(sender=None, task_id=None, **kwargs):
    if isinstance(sender, UserTaskMixin):
        tracking.unregister_running(task_id)


@task_failure.connect(dispatch_uid="user_tasks.failure")
def task_failed(sender=None, task_id=None, exception=None, einfo=None, **kwargs):
    """A user task raised: Canceled if it honoured a cancel, else Failed (the message is the
    exception's text; the traceback is kept for staff only)."""
    if not isinstance(sender, UserTaskMixin):
        return
    tracking.unregister_running(task_id)
    status = _row(task_id)
    if status is None:
        return
    if isinstance(exception, Aborted):
        status._finish(State.CANCELED, EventKind.CANCELED)
        return
    if einfo is not None:
        text = str(einfo.traceback)
    elif exception is not None:
        text = "".join(traceback_lib.format_exception(type(exception), exception, exception.__traceback__))
    else:
        text = ""
    cls = type(exception)
    status.fail(str(exception) or cls.__name__, error_class=f"{cls.__module__}.{cls.__qualname__}", traceback=text)


@task_retry.connect(dispatch_uid="user_tasks.retry")
def retrying_task(sender=None, request=None, reason=None, **kwargs):
    """The attempt failed and the task will run again."""
    if not isinstance(sender, UserTaskMixin):
        return
    task_id = getattr(request, "id", None)
    tracking.unregister_running(task_id)
    status = _row(task_id)
    if status is not None:
        status.retry(reason=str(reason or ""))


@task_success.connect(dispatch_uid="user_tasks.success")
def task_succeeded(sender=None, **kwargs):
    """The task returned: Succeeded, unless it already ended otherwise (it failed itself or
    was canceled and caught the exception)."""
    if not isinstance(sender, UserTaskMixin):
        return
    status = _row(sender.request.id)
    if status is not None and status.is_active:  # (a custom state is In Progress)
        status.succeed()


@task_revoked.connect(dispatch_uid="user_tasks.revoked")
def task_was_revoked(sender=None, request=None, terminated=None, expired=None, **kwargs):
    """A worker dropped a revoked (or expired) user task: it ends Canceled (or Failed)."""
    if not isinstance(sender, UserTaskMixin):
        return
    task_id = getattr(request, "id", None) or getattr(request, "task_id", None)
    tracking.unregister_running(task_id)
    status = _row(task_id)
    if status is None or not status.is_active:
        return
    if expired:
        status.fail("The task expired before it could run.")
    else:
        status._finish(State.CANCELED, EventKind.CANCELED, "Revoked.")


@worker_process_shutdown.connect(dispatch_uid="user_tasks.process_shutdown")
@worker_shutdown.connect(dispatch_uid="user_tasks.shutdown")
def _stop_writer(**kwargs):
    from usertasks import runs

    runs.shutdown()


def _stopped_has_listeners(**hints):
    return user_task_stopped.has_listeners(UserTaskStatus)


ACTS["user_tasks.stopped"] = _stopped_has_listeners  # a worker need not wait for it otherwise


@receiver(task_finished, dispatch_uid="user_tasks.stopped")
def send_user_task_stopped(sender=None, status=None, state=None, **kwargs):
    """``user_task_stopped`` for every task that reaches a final state, Celery and Dramatiq
    alike, so receivers written for django-user-tasks keep working after a task moves to
    Dramatiq.  A group, chain or chord sends it once, when it ends, as a task without a parent:
    a receiver that emails top-level tasks emails once per canvas."""
    if status is None or not user_task_stopped.has_listeners(UserTaskStatus):
        return
    if isinstance(status, LazyObject):  # usertasks loads the row on first use
        if status._wrapped is empty:
            status._setup()
        status = status._wrapped
    caller = caller_instance(status.pk)
    if caller is not None:  # the instance whose method made the change gets the row's values
        for f in status._meta.concrete_fields:
            setattr(caller, f.attname, getattr(status, f.attname))
        status = caller
    if not isinstance(status, UserTaskStatus):
        proxy = UserTaskStatus()
        proxy.__dict__.update({k: v for k, v in status.__dict__.items() if k != "_state"})
        proxy._state.adding = False
        proxy._state.db = status._state.db
        status = proxy
    for rcv, response in user_task_stopped.send_robust(sender=UserTaskStatus, status=status):
        if isinstance(response, Exception):
            logger.error("user_tasks: user_task_stopped receiver %r failed: %r", rcv, response)
