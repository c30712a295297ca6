"""usertasks: user-triggered long-running tasks for Django, on Dramatiq.

This module stays light: it imports no Django model, so it can be imported from settings,
actor modules and worker bootstrap code alike.
"""

from __future__ import annotations

from typing import Any

from .actors import UserTaskActor, user_task
from .context import TaskContext, current_task, on_behalf_of
from .exceptions import Aborted, ArgumentsNotSerializable, EnqueueError, UserTasksError

__version__ = "0.1.0"

__all__ = [
    "Aborted",
    "ArgumentsNotSerializable",
    "EnqueueError",
    "TaskContext",
    "UserTaskActor",
    "UserTasksError",
    "current_task",
    "on_behalf_of",
    "pipeline",
    "user_task",
]


def __getattr__(name: str) -> Any:
    # ``usertasks.pipeline`` is imported on first use, keeping this module light.
    if name == "pipeline":
        from .containers.pipelines import pipeline

        return pipeline
    raise AttributeError(f"module 'usertasks' has no attribute {name!r}")
