"""Errors raised by usertasks.  Every one derives from :class:`UserTasksError`, except
:class:`ForcedAbort`, which must not be caught by ``except Exception``."""

from __future__ import annotations

from dramatiq.middleware.threading import Interrupt


class UserTasksError(Exception):
    """A usertasks operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class Aborted(UserTasksError):
    """The task was canceled."""

    # Raised inside a task by ``step()`` / ``check_abort()`` once a cancel is requested; the
    # worker ends the task Canceled and never retries it.


class ArgumentsNotSerializable(UserTasksError, TypeError):
    """The task arguments cannot be encoded into a message."""


class EnqueueError(UserTasksError):
    """The task message could not be handed to the broker."""


class ConfigurationError(UserTasksError):
    """usertasks is not configured correctly."""


class AbortBackendError(UserTasksError):
    """The abort flag store is unreachable."""


class RerunError(UserTasksError):
    """The task cannot be run again."""

    # Raised by ``status.rerun()`` before anything is written: the task has not finished, its
    # input was not stored (or had sensitive arguments), its actor is gone, or its stored
    # arguments no longer fit the actor's signature.


class ForcedAbort(Interrupt):
    """The task ignored a cancel for longer than its ``abort_grace`` and was interrupted."""

    # Raised asynchronously in the worker thread (like Dramatiq's ``TimeLimitExceeded``).  It
    # derives from ``BaseException`` through Dramatiq's ``Interrupt`` so that a broad
    # ``except Exception`` in the task cannot swallow it.  The task ends Canceled, never retried.
