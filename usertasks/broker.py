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
    right before ``Retries`` so it sees the retry decision.  Idempotent; returns the broker."""
    from .middleware import UserTaskTracking

    broker = broker or configured_broker()
    if broker is None:
        return None
    if any(isinstance(m, UserTaskTracking) for m in broker.middleware):
        return broker
    if any(isinstance(m, Retries) for m in broker.middleware):
        broker.add_middleware(UserTaskTracking(), before=Retries)
    else:
        broker.add_middleware(UserTaskTracking())
    return broker


def middleware_problems(broker):
    """``(missing, misplaced)`` for usertasks' middleware on ``broker``."""
    from .middleware import UserTaskTracking

    kinds = [type(m) for m in broker.middleware]
    ours = [i for i, k in enumerate(kinds) if issubclass(k, UserTaskTracking)]
    if not ours:
        return True, False
    retries = [i for i, k in enumerate(kinds) if issubclass(k, Retries)]
    misplaced = bool(retries) and ours[0] > retries[0]
    return False, misplaced


__all__ = ["configured_broker", "install_middleware", "middleware_problems", "dramatiq"]
