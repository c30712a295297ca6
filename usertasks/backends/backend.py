"""``UserTasksBackend``: Django's task framework (``django.tasks`` or the ``django-tasks``
backport) on Dramatiq workers, tracked in usertasks' tables."""

import json
import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.db import router, transaction
from django.utils import timezone

from ..context import acting_for, current_task
from ..exceptions import ArgumentsNotSerializable
from ..models import UserTaskStatus
from ..sending import Prepared, check_encodable, fit_key, send_prepared
from . import framework as fw
from . import results, runner

__all__ = ["UserTasksBackend"]

#: Queue names Dramatiq accepts.
QUEUE_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9._-]*$")

#: OPTIONS keys and the Dramatiq message option each one sets.
MESSAGE_OPTIONS = {
    "MAX_RETRIES": "max_retries",
    "MIN_BACKOFF": "min_backoff",
    "MAX_BACKOFF": "max_backoff",
    "TIME_LIMIT": "time_limit",
}


class UserTasksBackend(fw.BaseTaskBackend):
    """Runs tasks declared with ``@task`` on Dramatiq workers as user tasks: a status row per
    task (its result), the status page, cancel, artifacts and email.

    ``OPTIONS``: ``MAX_RETRIES`` (default 0: no retries, as Django's task API has none),
    ``MIN_BACKOFF``/``MAX_BACKOFF`` (ms, between retries), ``TIME_LIMIT`` (ms), and ``UNIQUE``
    (``True`` for every task, or the module paths of the unique ones).  Not supported:
    priorities (Dramatiq orders work by actor, not by message); a task with a priority other
    than 0 is invalid."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = False

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        if not self.queues:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['QUEUES'] is empty: list the queues of this backend's tasks "
                "(a Dramatiq worker consumes only the queues it knows)"
            )
        for queue in self.queues:
            if not QUEUE_NAME.match(queue):
                raise ImproperlyConfigured(f"TASKS[{alias!r}]['QUEUES']: {queue!r} is not a valid Dramatiq queue name")
        unknown = set(self.options) - {*MESSAGE_OPTIONS, "UNIQUE"}
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']: unknown option(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted({*MESSAGE_OPTIONS, 'UNIQUE'}))}"
            )
        self.message_options = {}
        for key, name in MESSAGE_OPTIONS.items():
            value = self.options.get(key)
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS'][{key!r}] must be a whole number >= 0")
                self.message_options[name] = value
        unique = self.options.get("UNIQUE", False)
        if not isinstance(unique, bool) and not (
            isinstance(unique, Iterable) and not isinstance(unique, str) and all(isinstance(p, str) for p in unique)
        ):
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['UNIQUE'] must be True, False or a list of task module paths"
            )
        self.unique: bool | frozenset[str] = unique if isinstance(unique, bool) else frozenset(unique)
        runner.declare_queues(self.queues)

    # -- validation -----------------------------------------------------------------------------

    def is_unique(self, task: Any) -> bool:
        """Whether a task is deduplicated (``OPTIONS["UNIQUE"]``): an identical call (same task,
        arguments and user) while one is active returns that one's result."""
        return self.unique if isinstance(self.unique, bool) else task.module_path in self.unique

    # -- enqueue ----------------------------------------------------------------------------------

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Write the task's status row in the caller's transaction and send its message when that
        transaction commits (at once outside a transaction).  The result's id is the row's uuid."""
        self.validate_task(task)
        user = owner()
        try:
            args = fw.normalize_json(list(args))
            kwargs = fw.normalize_json(dict(kwargs))
        except (TypeError, ValueError) as exc:
            raise ArgumentsNotSerializable(f"Arguments of {task.module_path} must be JSON values: {exc}") from exc
        actor = runner.run_django_task
        message = actor.message_with_options(
            args=(task.module_path, args, kwargs, self.alias), **self.message_options
        ).copy(queue_name=task.queue_name)
        check_encodable(actor, [message])
        delay = None
        if task.run_after is not None:
            delay = max(0, int((task.run_after - timezone.now()) / timedelta(milliseconds=1))) or None
        prepared = Prepared(
            actor=actor,
            user=user,
            name=task.name,
            message=message,
            delay=delay,
            unique_key=unique_key(task, user, args, kwargs) if self.is_unique(task) else None,
            row_options={
                results.OPTION: {"path": task.module_path, "backend": self.alias, "args": args, "kwargs": kwargs}
            },
            task_class=task.module_path,
        )
        row = send_prepared([prepared])[0]
        created = row.task_id == message.message_id
        result = results.from_row(row, task, runs=None if not created else [])
        if created:
            transaction.on_commit(
                lambda: fw.task_enqueued.send(type(self), task_result=result),
                using=router.db_for_write(UserTaskStatus),
            )
        return result

    # -- results ------------------------------------------------------------------------------------

    def get_result(self, result_id: str) -> Any:
        """The result of ``result_id`` read from its status row (the framework's
        ``TaskResultDoesNotExist`` for an unknown id)."""
        return results.from_row(results.get_row(result_id, self.alias))


def owner() -> Any:
    """The user a task enqueued now belongs to: the one of ``usertasks.on_behalf_of()``, else
    the owner of the user task running this code, else nobody."""
    explicit, user = acting_for()
    if explicit:
        return user
    ctx = current_task()
    if ctx is None or ctx.status_id is None:
        return None
    user_id = UserTaskStatus.objects.filter(pk=ctx.status_id).values_list("user_id", flat=True).first()
    return None if user_id is None else get_user_model()._default_manager.filter(pk=user_id).first()


def unique_key(task: Any, user: Any, args: list[Any], kwargs: dict[str, Any]) -> str:
    """The dedupe key of a call: task, user and arguments."""
    canonical = json.dumps([args, kwargs], sort_keys=True, separators=(",", ":"))
    return fit_key(f"{runner.ACTOR_NAME}:{task.module_path}:{getattr(user, 'pk', None) or '-'}:{canonical}")
