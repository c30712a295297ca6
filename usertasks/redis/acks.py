"""Acknowledging a message after its final state commits, without holding a worker thread.

Dramatiq acknowledges a message from the worker thread that ran it, right after the
middleware's ``after_process_message``: ``post_process_message`` of the message's consumer
thread calls the consumer's ``ack`` (or ``nack``).  Were that thread to wait there for the
writer's group commit, each thread would carry one change per transaction, and a process of 8
threads could never finish more than 8 tasks per commit.  Instead, when the tracking middleware
marks a run whose end needs nothing but its commit (``protocol.PENDING_END``), the consumer
(:class:`usertasks.redis.consumer.Consumer`) hands the acknowledgement to this process's
:class:`Acker` and returns, so the worker thread takes its next message at once.

The acker waits for each end to be committed, then acknowledges.  Ends are committed in the
order they were submitted, so waiting for them one after another costs no more than waiting for
the last.  The successes of one consumer that committed together go to Redis in one round trip
(``ack.lua``, what Dramatiq's ``ack`` does, for many messages).

A message is thus still acknowledged only after its final state is durable; what changes is
which thread waits (and Dramatiq's ``before_ack``/``after_ack`` hooks run when the worker
thread hands the message over, not when Redis is told).  A finished run no longer counts against
the consumer's prefetch window, so the consumer keeps the worker threads busy while ends wait
for their commit, and more ends share a transaction; :data:`MAX_PENDING` bounds how many
acknowledgements may wait.  A crash before the acknowledgement leaves the message in the broker,
and its redelivery finds the row final and is skipped (``docs/guarantees.md``).
"""

import logging
import threading
import time
from collections import deque
from typing import Any

from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed, ConnectionFailed

from ..process import PerProcess
from ..rediscalls import Script

logger = logging.getLogger("usertasks.acks")

__all__ = ["MAX_PENDING", "Acker", "get_acker"]

#: Acknowledgements the acker may hold at once; beyond, worker threads wait for their own
#: commits again (a database that cannot keep up, or is down, slows the consumers down instead
#: of piling up finished runs).
MAX_PENDING = 1000
#: Seconds between two attempts to acknowledge while Redis is unreachable (as Dramatiq's
#: ``post_process_message`` waits).
RETRY_AFTER = 5.0

_ACK_MANY = Script.load(__file__, "ack.lua")


class Acker:
    """One thread per process: acknowledges messages once their ends are committed."""

    def __init__(self):
        self._cond = threading.Condition()
        self._queue: deque[tuple[Any, Any, Any, bool]] = deque()
        self._in_hand: list[Any] = []  # the consumers of the items being acknowledged now
        self._thread = threading.Thread(target=self._run, name="usertasks-acker", daemon=True)
        self._thread.start()

    @property
    def pending(self):
        """Acknowledgements waiting (queued, or being made)."""
        return len(self._queue) + len(self._in_hand)

    def defer(self, consumer, change, message, *, reject=False):
        """Acknowledge (``reject``: reject) ``message`` on ``consumer`` once ``change`` is
        committed."""
        with self._cond:
            self._queue.append((consumer, change, message, reject))
            self._cond.notify_all()

    def drain(self, consumer=None, timeout=30):
        """Wait until every deferred acknowledgement (of ``consumer``, or of all) has been made;
        ``False`` on timeout."""

        def done():
            return not any(c is consumer or consumer is None for c in self._in_hand) and not any(
                item[0] is consumer or consumer is None for item in self._queue
            )

        with self._cond:
            return self._cond.wait_for(done, timeout)

    def _run(self):
        while True:
            with self._cond:
                while not self._queue:
                    self._in_hand = []
                    self._cond.notify_all()
                    self._cond.wait()
                items = list(self._queue)
                self._queue.clear()
                self._in_hand = [item[0] for item in items]
            try:
                for _, change, _, _ in items:
                    change.done.wait()
                self._acknowledge(items)
            except Exception:  # pragma: no cover - _acknowledge falls back message by message
                logger.exception("usertasks: could not acknowledge %d message(s)", len(items))
            with self._cond:
                self._in_hand = []
                self._cond.notify_all()

    @staticmethod
    def _acknowledge(items):
        """The successes of each consumer in one round trip; rejections one by one."""
        by_consumer: dict[int, tuple[Any, list[Any]]] = {}
        for consumer, _, message, reject in items:
            if reject:
                _retrying(consumer.reject_now, message)
            else:
                by_consumer.setdefault(id(consumer), (consumer, []))[1].append(message)
        for consumer, messages in by_consumer.values():
            if len(messages) == 1 or not _ack_together(consumer, messages):
                for message in messages:
                    _retrying(consumer.ack_now, message)


def _ack_together(consumer, messages):
    """Acknowledge ``messages`` of ``consumer`` in one script call; ``False`` if that failed
    (the caller then acknowledges one by one: acknowledging twice is harmless)."""
    try:
        broker = consumer.broker
        ids = [message.options["redis_message_id"] for message in messages]
        _ACK_MANY(broker.client, (broker.namespace,), (broker.broker_id, current_millis(), consumer.queue_name, *ids))
    except Exception as exc:
        logger.info("usertasks: batched acknowledgement failed (%s); acknowledging one by one", exc)
        return False
    consumer.acknowledged(messages)
    return True


def _retrying(act, message):
    """``act(message)``, again every :data:`RETRY_AFTER` seconds while Redis is unreachable, as
    Dramatiq's ``post_process_message`` does (a message left unacknowledged would run again)."""
    while True:
        try:
            return act(message)
        except (ConnectionClosed, ConnectionFailed) as exc:  # (their common base was renamed in Dramatiq 2)
            logger.warning(
                "usertasks: cannot acknowledge message %s (%s); trying again in %.0f s",
                message.message_id,
                exc,
                RETRY_AFTER,
            )
            time.sleep(RETRY_AFTER)
        except Exception:
            logger.exception("usertasks: could not acknowledge message %s", message.message_id)
            return None


_ackers = PerProcess(Acker)


def get_acker():
    """This process's acker (started on first use, and again in a forked child)."""
    return _ackers.get()
