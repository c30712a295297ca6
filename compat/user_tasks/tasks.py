"""Base classes of user-triggered Celery tasks, and the purge task.

A task class derives from :class:`UserTask` (or mixes :class:`UserTaskMixin` into another Celery
``Task`` class) and takes a ``user_id`` argument, positional or keyword::

    @shared_task(base=UserTask, bind=True)
    def export(self, user_id, course_key):
        for chapter in chapters:
            ...
            self.status.increment_completed_steps()
"""

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Task, shared_task
from celery.exceptions import Ignore

from usertasks.exceptions import Aborted
from usertasks.models import EventKind
from usertasks.states import State

from . import tracking
from .exceptions import TaskCanceledException
from .models import UserTaskStatus

logger = logging.getLogger("user_tasks")
LOGGER = logger  # (django-user-tasks' name)

__all__ = ["UserTask", "UserTaskMixin", "purge_old_user_tasks"]


def _before_start(self, task_id, args, kwargs):
    """Runs in the worker right before the task body: a canceled task never runs its body."""
    try:
        status = self.status
    except TypeError as exc:
        logger.error("%s[%s]: %s", self.name, task_id, exc)
        return
    try:
        status.start(worker=tracking.worker_token(self))
    except TaskCanceledException:
        status._finish(State.CANCELED, EventKind.CANCELED, "Canceled before it started.")
        raise Ignore() from None
    if not self.request.is_eager:
        tracking.register_running(status, self)


_before_start.user_tasks = True  # type: ignore[attr-defined]


def _wrap_before_start(own):
    def before_start(self, task_id, args, kwargs):
        _before_start(self, task_id, args, kwargs)
        return own(self, task_id, args, kwargs)

    before_start.user_tasks = True  # type: ignore[attr-defined]
    before_start.__doc__ = own.__doc__
    return before_start


class UserTaskMixin:
    """Mixin of user-triggered Celery tasks.

    Subclasses usually override :meth:`generate_name` and :meth:`calculate_total_steps`.  Bound
    tasks (``bind=True``) reach their status row as ``self.status`` to report progress.  Every
    invocation must pass a ``user_id`` argument (positional or keyword).
    """

    #: Marks the classes that publishing and tracking recognise (``user_tasks.tracking``).
    user_task_mixin = True

    if TYPE_CHECKING:  # what celery.Task, the other base of every such class, provides
        name: str
        request: Any
        run: Callable[..., Any]
        before_start: Callable[..., Any]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Celery calls ``before_start`` only when a class below ``Task`` defines it: every
        # subclass gets it, wrapping one the subclass defines itself.
        own = cls.__dict__.get("before_start")
        if own is None:
            cls.before_start = _before_start
        elif not getattr(own, "user_tasks", False):
            cls.before_start = _wrap_before_start(own)

    @classmethod
    def generate_name(cls, arguments_dict):
        """Name of the status row, from the call's arguments; defaults to the task's name."""
        return cls.__name__.rsplit(".", maxsplit=1)[-1]

    @staticmethod
    def calculate_total_steps(arguments_dict):
        """Number of steps the task will take (1 unless overridden)."""
        return 1

    @classmethod
    def arguments_as_dict(cls, *args, **kwargs):
        """The call's arguments by parameter name (extra positional ones under their ``*args``
        name)."""
        run = inspect.getattr_static(cls, "run", None)
        bound_method = not isinstance(run, staticmethod)
        sig = inspect.signature(cls.run)
        bound = sig.bind(*((None, *args) if bound_method else args), **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        if bound_method:
            arguments.pop(next(iter(sig.parameters)), None)
        return arguments

    @property
    def status(self):
        """The :class:`~user_tasks.models.UserTaskStatus` of the running call (written now if the
        call was never published, as in eager mode)."""
        task_id = self.request.id
        row = UserTaskStatus.objects.filter(task_id=task_id).first()
        if row is not None:
            return row
        arguments, name, total = tracking.describe(
            self, tuple(self.request.args or ()), dict(self.request.kwargs or {})
        )
        user_id = tracking.valid_user_id(arguments, self.name)
        if user_id is None:
            raise TypeError(f"{self.name}: no status row: the task needs a valid user_id argument")
        try:
            return tracking._new_row(
                task_id=task_id,
                user_id=user_id,
                name=name,
                task_class=self.name,
                total_steps=total,
                notify=getattr(self, "notify", False),
            )
        except Exception:
            row = UserTaskStatus.objects.filter(task_id=task_id).first()
            if row is None:
                raise
            return row


class UserTask(Task, UserTaskMixin):
    """Abstract base class of user-triggered Celery tasks (see :class:`UserTaskMixin`)."""

    abstract = True
    #: A task that honours a cancel ends Canceled: Celery logs it without a traceback.
    throws = (TaskCanceledException, Aborted)


@shared_task(name="user_tasks.tasks.purge_old_user_tasks")
def purge_old_user_tasks():
    """Delete finished tasks (with their artifacts and stored files) that finished more than
    ``USER_TASKS_MAX_AGE`` ago; never a task that is still running.  Schedule it with Celery
    beat.  Returns the number of tasks deleted."""
    from .purge import purge

    return purge()
