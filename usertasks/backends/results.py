"""Status rows as Django ``TaskResult`` objects, and the run of one task on a worker."""

import json
import traceback
import uuid
from dataclasses import replace
from typing import Any

from django.utils import timezone
from django.utils.module_loading import import_string

from ..models import EventKind, UserTaskEvent, UserTaskStatus
from ..states import State
from . import framework as fw
from .errors import ReturnValueNotSerializable

#: The row's state -> the result's status.
STATUS: dict[str, Any] = {
    State.PENDING: fw.TaskResultStatus.READY,
    State.IN_PROGRESS: fw.TaskResultStatus.RUNNING,
    State.RETRYING: fw.TaskResultStatus.RUNNING,
    State.SUCCEEDED: fw.TaskResultStatus.SUCCESSFUL,
    State.FAILED: fw.TaskResultStatus.FAILED,
    State.CANCELED: fw.TaskResultStatus.FAILED,
}

#: The key of a status row's ``options`` that marks a task of Django's task API.
OPTION = "django_task"


def does_not_exist(result_id: Any, why: str = "") -> Exception:
    return fw.TaskResultDoesNotExist(f"No task result with id {result_id!r}{why}")


def get_row(result_id: Any, alias: str) -> UserTaskStatus:
    """The status row of ``result_id`` enqueued through backend ``alias``, or the framework's
    ``TaskResultDoesNotExist``."""
    try:
        key = uuid.UUID(str(result_id))
    except (TypeError, ValueError):
        raise does_not_exist(result_id) from None
    row = UserTaskStatus.objects.filter(uuid=key).first()
    info = (row.options or {}).get(OPTION) if row is not None else None
    if row is None or not isinstance(info, dict) or info.get("backend") != alias:
        raise does_not_exist(result_id)
    return row


def load_task(path: str, alias: str, result_id: Any = None) -> Any:
    """The ``Task`` object at ``path`` (the module attribute ``@task`` made), on backend ``alias``."""
    try:
        task = import_string(path)
    except ImportError:
        task = None
    if not isinstance(task, fw.Task):
        raise does_not_exist(result_id, f": its task {path} can no longer be imported")
    return task if task.backend == alias else task.using(backend=alias)


def errors_of(row: UserTaskStatus) -> list[Any]:
    """The ``errors`` of a result: the row's exception class and traceback."""
    if row.state == State.SUCCEEDED:
        return []
    if row.error_class:  # the last failed attempt's (a later one may be pending or running)
        return [fw.TaskError(exception_class_path=row.error_class, traceback=row.traceback or row.error)]
    if row.state == State.CANCELED:
        return [fw.TaskError(exception_class_path="usertasks.exceptions.Aborted", traceback="The task was canceled.")]
    if row.state == State.FAILED:
        # Failed before or outside its body: lost worker, expired message, broker error.
        text = row.error or "The task failed."
        return [fw.TaskError(exception_class_path="usertasks.exceptions.UserTasksError", traceback=text)]
    return []


def from_row(row: UserTaskStatus, task: Any = None, *, runs: Any = None) -> Any:
    """The ``TaskResult`` of ``row``.  ``runs``: its ``(worker, started)`` pairs, oldest first
    (read from its ``started`` events when not given)."""
    info = row.options[OPTION]
    if task is None:
        task = load_task(info["path"], info["backend"], row.uuid)
    if runs is None:
        runs = list(
            UserTaskEvent.objects.filter(status_id=row.pk, kind=EventKind.STARTED)
            .order_by("id")
            .values_list("detail", "created")
        )
    status = STATUS[row.state]
    result: Any = fw.TaskResult(
        task=task,
        id=str(row.uuid),
        status=status,
        enqueued_at=row.created,
        started_at=row.started or (runs[0][1] if runs else None),
        finished_at=row.finished if status in (fw.TaskResultStatus.SUCCESSFUL, fw.TaskResultStatus.FAILED) else None,
        last_attempted_at=runs[-1][1] if runs else row.started,
        args=info.get("args", []),
        kwargs=info.get("kwargs", {}),
        backend=info["backend"],
        errors=errors_of(row),
        worker_ids=[worker for worker, _ in runs],
    )
    if status == fw.TaskResultStatus.SUCCESSFUL:
        fw.set_field(result, "_return_value", row.return_value)
    return result


def storable(path: str, value: Any, normalize: Any) -> Any:
    """``value`` as the JSON that will be stored, or :class:`ReturnValueNotSerializable`."""
    try:
        normalized = normalize(value)
        json.dumps(normalized, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ReturnValueNotSerializable(
            f"The return value of {path} cannot be stored as JSON ({type(value).__name__}): {exc}"
        ) from None
    return normalized


def run(ctx: Any, path: str, args: list[Any], kwargs: dict[str, Any], alias: str) -> None:
    """Run the task at ``path`` in the worker's run ``ctx`` (``usertasks.current_task()``):
    Django's context for ``takes_context`` tasks, its signals, the return value stored."""
    task = load_task(path, alias)
    if not ctx.tracked:  # sent by hand with .send(): nothing to report to
        task.call(*args, **kwargs)
        return
    backend = fw.task_backends[alias]
    sender = type(backend)
    result = _running(ctx, task)
    fw.task_started.send(sender, task_result=result)
    try:
        if task.takes_context:
            value = task.call(fw.TaskContext(task_result=result), *args, **kwargs)
        else:
            value = task.call(*args, **kwargs)
        stored = storable(path, value, fw.normalize_json)
        if stored is not None:
            # Not a change of state: the run's end (usertasks.transitions) follows.
            UserTaskStatus.objects.filter(pk=ctx.status_id).update(return_value=stored)
    except BaseException as exc:
        error = fw.TaskError(
            exception_class_path=f"{type(exc).__module__}.{type(exc).__qualname__}",
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )
        _finish(result, fw.TaskResultStatus.FAILED, errors=[*result.errors, error])
        fw.task_finished.send(sender, task_result=result)
        raise
    _finish(result, fw.TaskResultStatus.SUCCESSFUL)
    fw.set_field(result, "_return_value", stored)
    fw.task_finished.send(sender, task_result=result)


def _running(ctx: Any, task: Any) -> Any:
    """The result of the run ``ctx`` as it starts (its row's start may not be stored yet)."""
    row = UserTaskStatus.objects.get(pk=ctx.status_id)
    earlier = list(
        UserTaskEvent.objects.filter(status_id=row.pk, kind=EventKind.STARTED, attempt__lt=ctx.attempt)
        .order_by("id")
        .values_list("detail", "created")
    )
    now = timezone.now()
    result = from_row(row, task, runs=[*earlier, (ctx.worker, now)])
    result = replace(result, status=fw.TaskResultStatus.RUNNING, finished_at=None, errors=errors_of(row))
    return result


def _finish(result: Any, status: Any, errors: Any = None) -> None:
    fw.set_field(result, "status", status)
    fw.set_field(result, "finished_at", timezone.now())
    if errors is not None:
        fw.set_field(result, "errors", errors)
