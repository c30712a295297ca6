"""The Dramatiq broker as usertasks sees it: which one is configured, and sending many messages.

usertasks sends through the broker's documented API.  A broker that can do better offers
``enqueue_many(items)``: ``usertasks.redis.RedisBroker`` puts a chunk of messages on Redis in one
round trip and wakes the idle consumers of the queues it fills (the fast path); any other broker
(Dramatiq's own ``RedisBroker``, ``RabbitmqBroker``, ``StubBroker``) gets one ``enqueue()`` per
message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["EnqueueFailed", "configured_broker", "enqueue_many"]


def configured_broker() -> Any:
    """The global Dramatiq broker if one has been set (django-dramatiq sets it), else ``None``.

    Unlike :func:`dramatiq.get_broker`, never creates a default broker as a side effect."""
    import dramatiq.broker

    return dramatiq.broker.global_broker


class EnqueueFailed(Exception):
    """Raised by :func:`enqueue_many`: ``sent`` messages were sent, the rest were not."""

    def __init__(self, sent: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.sent = sent
        self.error = error


def enqueue_many(broker: Any, items: Iterable[tuple[Any, ...]]) -> int:
    """Send ``(message, delay)`` or ``(message, delay, options)`` items in order through
    ``broker`` (``options`` are added to the message's), with the broker's middleware's enqueue
    hooks for each message.  Returns how many were sent; raises :class:`EnqueueFailed` with how
    many were sent when one fails."""
    items = list(items)
    many = getattr(broker, "enqueue_many", None)
    if many is not None:
        return many(items)
    sent = 0
    for message, delay, *options in items:
        try:
            broker.enqueue(message.copy(options=options[0]) if options else message, delay=delay)
        except Exception as exc:
            raise EnqueueFailed(sent, exc) from exc
        sent += 1
    return sent
