"""Waking idle Redis consumers when usertasks sends them work.

Dramatiq's Redis consumers poll: a consumer that finds its queue empty sleeps before it asks
again, a sleep that doubles from about 5 ms up to the worker timeout (1 s by default).  A task
sent to workers that have been idle for a while therefore waits up to that long before it
starts, and a fan-out waits twice (for its container, then for its first children, while the
other consumers back off).

usertasks' own sends (``RedisBroker.enqueue_many``: ``send_for``, ``send_many_for``, fan-out
children, pipeline stages, completion callbacks) publish on the queue's *wake channel*
(``<namespace>:<queue>.wake``) when they push onto a queue that was empty, in the same script
call as the push (no extra round trip).  The consumers of the worker processes
(:class:`usertasks.redis.consumer.Consumer`) spend their idle backoff listening on that channel
instead of in ``time.sleep``: a publish ends every listening consumer's backoff at once, and the
one that finds the message starts it.  Nothing else changes: a consumer that hears nothing
polls exactly as Dramatiq's does, so messages sent by other code (plain ``actor.send()``,
Dramatiq's retries, delayed messages coming due) are picked up at Dramatiq's pace, and a lost
wake-up costs at most one backoff.

Only an empty queue's first push publishes.  A consumer only waits after a fetch found its
queue empty, so any push after that fetch finds the queue empty, or follows one that did.
(The exception is a message pushed by code that does not publish, such as a retry: until the
queue empties again, usertasks' pushes do not publish and consumers poll at Dramatiq's pace.)

A consumer holds one Redis connection for its subscription (one per queue and process; none in
web processes).  A consumer that does not wait (it keeps finding messages, or its window is
full) reads what was published meanwhile at most once a second, before a fetch or when its wait
for room ends, so a busy consumer's subscription never piles up.  Any Redis error
drops the subscription: the consumer sleeps as Dramatiq's does and subscribes again after
:data:`RETRY_AFTER` seconds.  With ``USERTASKS["WAKE_CONSUMERS"] = False`` the consumers do not
subscribe and poll as Dramatiq's do (the sends still publish: without subscribers, a no-op).
"""

import logging
import time

logger = logging.getLogger("usertasks.wakeup")

__all__ = ["RETRY_AFTER", "Waker", "channel"]

#: Seconds a consumer sleeps as Dramatiq's does after its subscription failed, before it
#: subscribes again.
RETRY_AFTER = 5.0


def channel(namespace, queue_name):
    """The wake channel of a queue (the name the enqueue script publishes on)."""
    return f"{namespace}:{queue_name}.wake"


class Waker:
    """One consumer's subscription to its queue's wake channel, used only by the consumer's
    thread.  :meth:`wait` is the consumer's idle backoff."""

    #: Seconds between two reads of a subscription whose consumer never waits (it keeps finding
    #: messages), so that the wake-ups published meanwhile do not pile up in Redis.
    DRAIN_EVERY = 1.0

    def __init__(self, client, name):
        self.client = client
        self.channel = name
        self._pubsub = None
        self._retry_at = 0.0
        self._drain_at = 0.0

    def wait(self, seconds):
        """Sleep up to ``seconds``; return ``True`` as soon as a wake-up is heard (the queue has
        messages again), ``False`` when the time is up."""
        began = time.monotonic()
        deadline = began + seconds
        pubsub = self._subscription()
        if pubsub is None:
            time.sleep(seconds)
            return False
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                # ``None``: the time is up, or the subscription's confirmation was read.
                if pubsub.get_message(timeout=left) is not None:
                    self._drain(pubsub)  # one wake-up is enough, however many were published
                    logger.debug(
                        "usertasks: %s woken after %.3f s of a %.3f s backoff",
                        self.channel,
                        time.monotonic() - began,
                        seconds,
                    )
                    return True
        except Exception as exc:
            self._failed(exc)
            time.sleep(max(0.0, deadline - time.monotonic()))
            return False

    def drain_if_due(self):
        """:meth:`drain`, at most once per :attr:`DRAIN_EVERY` (the consumer calls this before
        each fetch)."""
        if self._pubsub is not None and time.monotonic() >= self._drain_at:
            self.drain()

    def drain(self):
        """Read, and forget, what was published while the consumer was busy."""
        pubsub = self._pubsub
        if pubsub is None:
            return
        try:
            self._drain(pubsub)
        except Exception as exc:
            self._failed(exc)

    def close(self):
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception as exc:  # pragma: no cover - closing a broken connection
                logger.debug("usertasks: closing the wake-up subscription to %s: %s", self.channel, exc)

    @property
    def subscribed(self):
        return self._pubsub is not None

    def _subscription(self):
        if self._pubsub is None and time.monotonic() >= self._retry_at:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
            except Exception as exc:
                pubsub.close()
                self._failed(exc)
                return None
            self._pubsub = pubsub
        return self._pubsub

    def _drain(self, pubsub):
        while pubsub.get_message(timeout=0) is not None:
            pass
        self._drain_at = time.monotonic() + self.DRAIN_EVERY

    def _failed(self, exc):
        logger.info(
            "usertasks: wake-up subscription to %s failed (%s); polling only for %.0f s", self.channel, exc, RETRY_AFTER
        )
        self.close()
        self._retry_at = time.monotonic() + RETRY_AFTER
