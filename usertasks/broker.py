"""Finding the Dramatiq broker and putting usertasks' middleware on it."""

import logging

import dramatiq
from dramatiq.middleware import Retries

logger = logging.getLogger("usertasks")


def configured_broker():
    """The global Dramatiq broker if one has been set (django-dramatiq sets it), else ``None``.

    Unlike :func:`dramatiq.get_broker`, never creates a default broker as a side effect."""
    import dramatiq.broker

    return dramatiq.broker.global_broker


def install_middleware(broker=None):
    """Add :class:`~usertasks.middleware.UserTaskTracking` to ``broker`` (default: the global one),
    right before ``Retries`` so it sees the retry decision, and
    :class:`~usertasks.middleware.UserTaskAbort` right before it.  Idempotent; returns the broker."""
    from .middleware import UserTaskAbort, UserTaskTracking

    broker = broker or configured_broker()
    if broker is None:
        return None
    if not any(isinstance(m, UserTaskTracking) for m in broker.middleware):
        if any(isinstance(m, Retries) for m in broker.middleware):
            broker.add_middleware(UserTaskTracking(), before=Retries)
        else:
            broker.add_middleware(UserTaskTracking())
    # Cancel checks come right before tracking, so a skipped message never shows as started.
    if not any(isinstance(m, UserTaskAbort) for m in broker.middleware):
        broker.add_middleware(UserTaskAbort(), before=UserTaskTracking)
    return broker


def middleware_problems(broker):
    """``(missing, misplaced)`` for usertasks' middleware on ``broker``."""
    from .middleware import UserTaskAbort, UserTaskTracking

    kinds = [type(m) for m in broker.middleware]
    ours = [i for i, k in enumerate(kinds) if issubclass(k, UserTaskTracking)]
    if not ours or not any(issubclass(k, UserTaskAbort) for k in kinds):
        return True, False
    retries = [i for i, k in enumerate(kinds) if issubclass(k, Retries)]
    misplaced = bool(retries) and ours[0] > retries[0]
    return False, misplaced


__all__ = ["configured_broker", "install_middleware", "middleware_problems", "dramatiq"]
