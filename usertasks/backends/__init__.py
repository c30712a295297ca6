"""Django's task framework on usertasks: ``TASKS = {"default": {"BACKEND":
"usertasks.backends.UserTasksBackend"}}``.

``django.tasks`` (Django 6.0+) is used when present, else the ``django-tasks`` backport (module
``django_tasks``).  This package imports neither until :class:`UserTasksBackend` is first used:
the actor that runs such tasks (``usertasks.backends.runner``) is registered on every worker,
whether the framework is installed or not.
"""

from typing import Any

__all__ = ["UserTasksBackend"]


def __getattr__(name: str) -> Any:
    if name == "UserTasksBackend":
        from .backend import UserTasksBackend

        return UserTasksBackend
    raise AttributeError(f"module 'usertasks.backends' has no attribute {name!r}")
