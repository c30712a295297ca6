"""Errors of the tasks run through Django's task API."""

from ..exceptions import UserTasksError

__all__ = ["ReturnValueNotSerializable"]


class ReturnValueNotSerializable(UserTasksError, TypeError):
    """The task's return value cannot be stored as JSON."""
