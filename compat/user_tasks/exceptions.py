"""Exceptions of the ``user_tasks`` compatibility package."""

from usertasks.exceptions import Aborted


class TaskCanceledException(Aborted, RuntimeError):
    """The task was canceled."""

    # Raised by the progress methods of ``UserTaskStatus`` once a cancel has been requested.  It
    # is also a ``usertasks.Aborted``, so code written for either package can catch it.
