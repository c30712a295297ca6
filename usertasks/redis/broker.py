"""``usertasks.redis.RedisBroker``: Dramatiq's Redis broker with usertasks' fast path.

A site turns the fast path on by naming this class instead of Dramatiq's::

    DRAMATIQ_BROKER = {"BROKER": "usertasks.redis.RedisBroker", "OPTIONS": {"url": "redis://..."}, ...}

It is Dramatiq's ``RedisBroker`` (same options, same keys in Redis, same messages: workers of
either class can share queues), extended where Dramatiq invites it:

* its ``consumer_class`` is :class:`usertasks.redis.consumer.Consumer` (fetch and claim in one
  round trip, acknowledgements after the commit off the worker threads, wake-ups);
* :meth:`enqueue_many` puts a chunk of messages on Redis in one script call (``enqueue.lua``) and
  wakes the idle consumers of the queues it fills; usertasks' sends use it
  (``usertasks.broker.enqueue_many``);
* :meth:`fetch` is the fetch its consumer uses when the script cannot claim.

With Dramatiq's own ``RedisBroker`` everything works the same way through the middleware hooks
alone, slower; the system check ``usertasks.W003`` says so.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

from dramatiq import Message
from dramatiq.brokers.redis import MAINTENANCE_SCALE
from dramatiq.brokers.redis import RedisBroker as DramatiqRedisBroker
from dramatiq.common import current_millis, dq_name

from ..broker import EnqueueFailed
from ..ids import random_uuids
from ..rediscalls import Script
from .consumer import Consumer

__all__ = ["RedisBroker"]

_ENQUEUE = Script.load(__file__, "enqueue.lua")


class RedisBroker(DramatiqRedisBroker):
    """See the module's docstring."""

    #: Messages per script call in :meth:`enqueue_many`.
    chunk_size = 500

    @property
    def consumer_class(self) -> type[Consumer]:
        return Consumer

    def enqueue_many(self, items: Iterable[tuple[Any, ...]]) -> int:
        """Send ``(message, delay)`` or ``(message, delay, options)`` items in order, ``options``
        added to each message's: per message what :meth:`enqueue` does (a Redis id of its own, the
        delay queue and ``eta`` for a delayed message, the ``before_enqueue`` and
        ``after_enqueue`` hooks), :attr:`chunk_size` messages per round trip, all or nothing per
        chunk.  A push onto an empty queue wakes its idle consumers.  Returns how many were
        sent; raises :class:`usertasks.broker.EnqueueFailed` with how many were sent when a
        chunk fails.  A subclass that overrides :meth:`enqueue` gets one call of it per
        message."""
        items = list(items)
        sent = 0
        scripted = type(self).enqueue is DramatiqRedisBroker.enqueue
        step = self.chunk_size if scripted else 1
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            try:
                if scripted:
                    self._enqueue_chunk(chunk)
                else:
                    message, delay, *options = chunk[0]
                    self.enqueue(message.copy(options=options[0]) if options else message, delay=delay)
            except Exception as exc:
                raise EnqueueFailed(sent, exc) from exc
            sent += len(chunk)
        return sent

    def _enqueue_chunk(self, chunk: list[tuple[Any, ...]]) -> None:
        before, after = _hooks(self, "enqueue")
        queues: dict[str, list[Any]] = {}  # queue name -> [redis id, data, ...], in order
        sent = []
        for (message, delay, *options), redis_id in zip(chunk, random_uuids(len(chunk))):
            queue_name = message.queue_name
            extra = {"redis_message_id": str(redis_id)}
            if options:
                extra = dict(options[0], **extra)
            if delay is not None:
                queue_name = dq_name(queue_name)
                extra["eta"] = current_millis() + delay
            message = Message(
                queue_name=queue_name,
                actor_name=message.actor_name,
                args=message.args,
                kwargs=message.kwargs,
                options={**message.options, **extra},
                message_id=message.message_id,
                message_timestamp=message.message_timestamp,
            )
            before(message, delay)
            queues.setdefault(queue_name, []).extend((extra["redis_message_id"], message.encode()))
            sent.append((message, delay))
        args: list[Any] = []
        for queue_name, entries in queues.items():
            args += (queue_name, len(entries) // 2, *entries)
        _ENQUEUE(self.client, (self.namespace,), args)
        for message, delay in sent:
            after(message, delay)

    def maintenance_due(self) -> bool:
        """Whether this fetch should also do Dramatiq's queue maintenance (requeue the
        messages of dead workers, expire dead letters): with Dramatiq's ``maintenance_chance``
        in a million, as every command of Dramatiq's broker rolls it."""
        return random.randint(1, MAINTENANCE_SCALE) <= self.maintenance_chance

    def fetch(self, queue_name: str, count: int, *, maintenance: bool = False) -> list[Any]:
        """Dramatiq's ``fetch`` of up to ``count`` messages; with ``maintenance`` the queue's
        maintenance is done in the same call (the consumer rolled for it), otherwise Dramatiq
        rolls as it does for every command."""
        if not maintenance:
            return self.do_fetch(queue_name, count)
        # dispatch(args=[command, timestamp, queue_name, worker_id, heartbeat_timeout,
        # dead_message_ttl, do_maintenance, max_unpack_size, ...], keys=[namespace]), as the
        # header of Dramatiq's dispatch.lua documents it.
        args = [
            "fetch",
            current_millis(),
            queue_name,
            self.broker_id,
            self.heartbeat_timeout,
            self.dead_message_ttl,
            1,
            self._max_unpack_size(),
            count,
        ]
        return self.scripts["dispatch"](args=args, keys=[self.namespace])


def _hooks(broker: Any, signal: str) -> tuple[Callable[..., None], Callable[..., None]]:
    """``(before, after)``: ``broker.emit_before(signal, ...)`` and ``emit_after``, calling only
    the middleware that define the hook (Dramatiq's loop calls every middleware's no-op too:
    two dozen calls per message).  Same order and errors as Dramatiq's."""
    from dramatiq import Broker
    from dramatiq.middleware import Middleware, MiddlewareError

    cls = type(broker)
    if cls.emit_before is not Broker.emit_before or cls.emit_after is not Broker.emit_after:
        return (lambda *a: broker.emit_before(signal, *a)), (lambda *a: broker.emit_after(signal, *a))
    names = ("before_" + signal, "after_" + signal)
    own = [
        [
            (m, getattr(m, name))
            for m in broker.middleware
            if getattr(type(m), name, None) is not getattr(Middleware, name)
        ]
        for name in names
    ]
    log = broker.logger

    def before(*args: Any) -> None:
        for middleware, hook in own[0]:
            try:
                hook(broker, *args)
            except MiddlewareError:
                raise
            except Exception:
                log.critical("Unexpected failure in %s of %r.", names[0], middleware, exc_info=True)

    def after(*args: Any) -> None:
        for middleware, hook in reversed(own[1]):
            try:
                hook(broker, *args)
            except Exception:
                log.critical("Unexpected failure in %s of %r.", names[1], middleware, exc_info=True)

    return before, after
