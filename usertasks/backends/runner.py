"""The Dramatiq actor that runs, on a worker, the tasks enqueued through Django's task API.

One actor, ``usertasks.django_task``, runs them all: its message names the task function
(``module.path.function``), its arguments and the backend's alias.  Being a user task, each
run has its status row, progress, cancel, artifacts and email.  This module imports nothing of
Django's task framework until a task runs, so every worker can register the actor
(``usertasks.tasks`` imports it) whether the framework is installed or not.
"""

from typing import Any

from django.conf import settings

from ..actors import user_task
from .errors import ReturnValueNotSerializable

__all__ = ["ACTOR_NAME", "declare_queues", "run_django_task"]

ACTOR_NAME = "usertasks.django_task"


def _task_name(path: str, args: Any = None, kwargs: Any = None, backend: Any = None) -> str:
    # Django's own name of a task: its function's name.
    return path.rsplit(".", 1)[-1]


@user_task(
    name=_task_name,
    actor_name=ACTOR_NAME,
    # Django's task API has no retries: a backend's OPTIONS turn them on (message options).
    max_retries=0,
    throws=(ReturnValueNotSerializable,),
)
def run_django_task(task: Any, path: str, args: list[Any], kwargs: dict[str, Any], backend: str) -> None:
    from . import results

    results.run(task, path, args, kwargs, backend)


def declare_queues(queues: Any = None) -> None:
    """Declare ``queues`` on the broker, by default those of every backend of ``TASKS`` that is
    usertasks' (a worker consumes only the queues it knows)."""
    if queues is None:
        queues = set()
        for params in (getattr(settings, "TASKS", None) or {}).values():
            if str(params.get("BACKEND", "")).startswith("usertasks.backends"):
                queues.update(params.get("QUEUES") or ("default",))
    broker = run_django_task.broker
    declared = broker.get_declared_queues()
    for queue in sorted(queues):
        if queue not in declared:
            broker.declare_queue(queue)


declare_queues()
