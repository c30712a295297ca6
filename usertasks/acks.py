"""Acknowledging a message after its final state commits, without holding a worker thread.

Dramatiq acknowledges a message from the worker thread that ran it, right after the
middleware's ``after_process_message``.  Were that thread to wait there for the writer's group
commit, each thread would carry one change per transaction, and a process of 8 threads could
never finish more than 8 tasks per commit.  Instead :class:`UserTaskTracking` hands the
acknowledgement of a run whose end needs nothing else after its commit to this module:

* :func:`install` wraps ``post_process_message`` of each consumer thread (Dramatiq calls it
  with every finished message; it acknowledges or rejects).  For a message carrying a pending
  end, the wrapper passes the acknowledgement to the process's :class:`Acker` and returns, so
  the worker thread takes the next message at once.
* The acker thread waits for each such end to be committed, then runs the original
  ``post_process_message``.  Ends are committed in the order they were submitted, so waiting
  for them one after another costs no more than waiting for the last.  On a Redis broker the
  acknowledgements of everything that committed together go to Redis in one round trip (one
  script doing Dramatiq's ``ack`` for each message, with the broker's ``before_ack``/``after_ack``
  hooks around each).

A message is thus still acknowledged only after its final state is durable; what changes is
which thread waits.  A finished run no longer counts against the prefetch window of a Redis
consumer, so the consumer keeps the worker threads busy while ends wait for their commit, and
more ends share a transaction; :data:`MAX_PENDING` bounds how many acknowledgements may wait.
A crash before the acknowledgement leaves the message in the broker, and its redelivery finds
the row final and is skipped (``docs/guarantees.md``).
"""

import logging
import threading
import time
from collections import deque

from .process import PerProcess
from .rediscalls import Script

logger = logging.getLogger("usertasks.acks")

__all__ = ["Acker", "defer", "deferring", "drain", "install"]

#: Queue names whose consumer threads acknowledge through the acker.
_queues = set()

from .protocol import PENDING_END as PENDING


def install(consumer_thread):
    """Wrap the ``post_process_message`` of a Dramatiq consumer thread (idempotent), and make the
    Redis consumers its broker creates claim the tracked messages they hand out and wait for room
    in their prefetch window (:class:`_Windowed`)."""
    _wrap_consume(getattr(consumer_thread, "broker", None))
    original = consumer_thread.post_process_message
    if getattr(original, "usertasks_original", None) is not None:
        return

    def post_process_message(message):
        op = vars(message).get(PENDING)  # set on the proxy, if at all (no forwarding to the message)
        if op is None or op.done.is_set():
            return original(message)
        setattr(message, PENDING, None)
        # The run is over: it no longer counts against the prefetch window of a Redis consumer
        # (which would otherwise stop fetching, and back off, while ends wait for a commit).
        # The acker's own limit (MAX_PENDING) bounds what waits.
        consumer = consumer_thread.consumer
        outstanding = getattr(consumer, "queued_message_ids", None)
        if isinstance(outstanding, set):
            outstanding.discard(message.message_id)
            _room(consumer)
        get_acker().defer(op, original, message)

    post_process_message.usertasks_original = original
    consumer_thread.post_process_message = post_process_message
    _queues.add(consumer_thread.queue_name)


# -- the prefetch window of Redis consumers -------------------------------------------------------


class _Windowed:
    """Mixed into a Redis consumer: fetches a batch and claims its tracked messages in one round
    trip (``usertasks.middleware.abort.fetch_claimed``; where it cannot, Dramatiq's own fetch
    and then one claim per batch, ``claim_prefetched``), and, when its prefetch
    window is full, waits until a slot frees (an acknowledgement, a rejection, a run handed to
    the acker) instead of Dramatiq's blind sleep.  That sleep is an idle-queue backoff (5-10 ms,
    doubling while the window stays full): applied to a full window, it leaves the worker
    threads idle once they have drained the few prefetched messages, most of the time for tasks
    of a millisecond or two.  Its idle backoff, when the queue is empty, is Dramatiq's, spent
    listening for the wake-ups of usertasks' sends (:mod:`usertasks.wakeup`) where the consumer
    is Dramatiq's own."""

    def __next__(self):
        if not self.message_cache and self.outstanding_message_count >= self.prefetch:
            room = self._usertasks_room
            room.clear()
            if self.outstanding_message_count >= self.prefetch:  # checked again after the clear
                room.wait(self.timeout / 1000)
            if self.outstanding_message_count >= self.prefetch:
                waker = self._usertasks_waker
                if waker is not None:
                    waker.drain()  # what was published while the window was full
                return None  # Dramatiq's loop goes on: delayed messages, shutdown
        if not self.message_cache:
            waker = self._usertasks_waker
            if waker is not None:
                waker.drain_if_due()  # what was published while this consumer kept finding messages
            fetched = _prefetching().fetch_claimed(self)  # the batch and its claims in one round trip
            if fetched is None and waker is not None:
                fetched = self._usertasks_fetch()  # Dramatiq's fetch, without its sleep
            if fetched is not None and not fetched:
                # Nothing queued: back off as Dramatiq's consumer does (a fetch of its own
                # would only ask again), woken early by a send to the queue.
                from dramatiq.common import compute_backoff

                self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
                if waker is None:
                    time.sleep(backoff_ms / 1000)
                else:
                    waker.wait(backoff_ms / 1000)
                return None
        proxy = super().__next__()
        if proxy is not None:
            _prefetching().claim_prefetched(self, proxy)  # claimed with its batch, in one round trip
        return proxy

    def _usertasks_fetch(self):
        """What Dramatiq's ``__next__`` fetches when its cache is empty (the window has room)."""
        import redis
        from dramatiq.errors import ConnectionClosed

        try:
            self.message_cache = self.broker.do_fetch(self.queue_name, self.prefetch - self.outstanding_message_count)
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None
        return self.message_cache

    def close(self):
        waker, self._usertasks_waker = self._usertasks_waker, None
        if waker is not None:
            waker.close()
        return super().close()

    def ack(self, message):
        try:
            return super().ack(message)
        finally:
            self._usertasks_room.set()

    def nack(self, message):
        try:
            return super().nack(message)
        finally:
            self._usertasks_room.set()


_abort_middleware = None


def _prefetching():
    """``usertasks.middleware.abort``, imported on first use (it imports this module)."""
    global _abort_middleware
    if _abort_middleware is None:
        from .middleware import abort

        _abort_middleware = abort
    return _abort_middleware


_windowed_classes = {}


def _windowed(consumer):
    """Turn a Redis consumer into a :class:`_Windowed` one (other consumers are left alone)."""
    cls = type(consumer)
    if isinstance(consumer, _Windowed) or not all(
        hasattr(consumer, name) for name in ("message_cache", "queued_message_ids", "prefetch", "timeout")
    ):
        return consumer
    sub = _windowed_classes.get(cls)
    if sub is None:
        sub = _windowed_classes[cls] = type(cls.__name__, (_Windowed, cls), {"__module__": cls.__module__})
    consumer._usertasks_room = threading.Event()
    consumer._usertasks_waker = _waker(consumer)
    consumer.__class__ = sub
    return consumer


def _waker(consumer):
    """A :class:`usertasks.wakeup.Waker` for a consumer that is Dramatiq's own Redis consumer (its
    fetch is known), unless ``USERTASKS["WAKE_CONSUMERS"]`` is off; else ``None``."""
    from dramatiq.brokers.redis import _RedisConsumer

    from .conf import app_settings
    from .wakeup import Waker, channel

    broker = consumer.broker
    if (
        not app_settings.WAKE_CONSUMERS or type(consumer).__next__ is not _RedisConsumer.__next__
        or not _pipelines(broker)
    ):
        return None
    return Waker(broker.client, channel(broker.namespace, consumer.queue_name))


def _room(consumer):
    room = getattr(consumer, "_usertasks_room", None)
    if room is not None:
        room.set()


def _wrap_consume(broker):
    """Make ``broker.consume`` return windowed consumers (idempotent)."""
    consume = getattr(broker, "consume", None)
    if consume is None or getattr(consume, "usertasks_original", None) is not None:
        return

    def windowed_consume(*args, **kwargs):
        return _windowed(consume(*args, **kwargs))

    windowed_consume.usertasks_original = consume
    broker.consume = windowed_consume


#: Acknowledgements the acker may hold at once; beyond, worker threads wait for their own
#: commits again (a database that cannot keep up, or is down, slows the consumers down instead
#: of piling up finished runs).
MAX_PENDING = 1000


def deferring(message):
    """Whether the acknowledgement of ``message`` can be handed to the acker."""
    if message.queue_name not in _queues:
        return False
    a = _ackers.current()
    return a is None or a.pending < MAX_PENDING


def defer(message, op):
    """Acknowledge ``message`` once ``op`` is committed instead of when its thread is done."""
    setattr(message, PENDING, op)


class Acker:
    """One thread per process: acknowledges messages once their ends are committed."""

    def __init__(self):
        self._cond = threading.Condition()
        self._queue = deque()
        self._busy = False
        self._in_hand = 0
        self._thread = threading.Thread(target=self._run, name="usertasks-acker", daemon=True)
        self._thread.start()

    @property
    def pending(self):
        """Acknowledgements waiting (queued, or being made)."""
        return len(self._queue) + self._in_hand

    def defer(self, op, post_process, message):
        with self._cond:
            self._queue.append((op, post_process, message))
            self._cond.notify_all()

    def drain(self, timeout=30):
        """Wait until every deferred acknowledgement has been made; ``False`` on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def _run(self):
        while True:
            with self._cond:
                while not self._queue:
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait()
                self._busy = True
                items = list(self._queue)
                self._queue.clear()
                self._in_hand = len(items)
            ready = []
            for op, post_process, message in items:
                op.done.wait()
                ready.append((post_process, message))
            try:
                self._post_process(ready)
            except Exception:  # pragma: no cover - _post_process falls back message by message
                logger.exception("usertasks: could not acknowledge %d message(s)", len(ready))
            self._in_hand = 0

    @staticmethod
    def _post_process(ready):
        """Acknowledge committed messages: the successes of one Redis consumer in one round trip,
        everything else through Dramatiq's own ``post_process_message``."""
        groups = {}
        for post_process, message in ready:
            thread = getattr(post_process, "__self__", None)
            if not message.failed and thread is not None and _pipelines(getattr(thread, "broker", None)):
                groups.setdefault(id(thread), (thread, post_process, []))[2].append(message)
            else:
                _post_process_one(post_process, message)
        for thread, post_process, messages in groups.values():
            if len(messages) == 1 or not _ack_together(thread, messages):
                for message in messages:
                    _post_process_one(post_process, message)


def _post_process_one(post_process, message):
    try:
        post_process(message)  # Dramatiq's own: retries broker errors, logs the rest
    except Exception:
        logger.exception("usertasks: could not acknowledge message %s", message.message_id)


def _pipelines(broker):
    from .broker import _pipelines

    return broker is not None and _pipelines(broker)


# KEYS[1]: Dramatiq's namespace.  ARGV: worker id, time (ms), queue name, then the Redis ids of
# the messages.  What the "ack" command of Dramatiq's dispatch script does (the worker's
# heartbeat; each message leaves the worker's set of unacknowledged messages and, if it was in
# it, the queue's hash), for many messages at once.
_ACK_MANY = Script("""
local namespace, worker_id, queue_name = KEYS[1], ARGV[1], ARGV[3]
redis.call("zadd", namespace .. ":__heartbeats__", ARGV[2], worker_id)
local acks = namespace .. ":__acks__." .. worker_id .. "." .. queue_name
local messages = namespace .. ":" .. queue_name .. ".msgs"
for i = 4, #ARGV do
  if redis.call("srem", acks, ARGV[i]) > 0 then
    redis.call("hdel", messages, ARGV[i])
  end
end
""")


def _ack_together(thread, messages):
    """What ``post_process_message`` does for each message (``before_ack`` hooks, the
    consumer's ``ack``, ``after_ack`` hooks), with the acknowledgements sent to Redis in one
    round trip: one script call (``_ACK_MANY``) where the consumer is Dramatiq's own, else a
    pipeline of its ``ack``.  ``False`` if that failed: the caller then acknowledges one by one
    (acknowledging twice is harmless)."""
    from .broker import _hooks

    consumer, broker = thread.consumer, thread.broker
    if consumer is None:
        return False
    before, after = _hooks(broker, "ack")
    try:
        if _dramatiqs_own(consumer, broker):
            from dramatiq.common import current_millis

            ids = []
            for message in messages:
                before(message)
                ids.append(message.options["redis_message_id"])
            _ACK_MANY(broker.client, (broker.namespace,), (broker.broker_id, current_millis(), consumer.queue_name, *ids))
            outstanding = consumer.queued_message_ids
            for message in messages:
                outstanding.discard(message.message_id)
            consumer._usertasks_room.set()
        else:
            _ack_through_pipeline(consumer, broker, messages, before)
    except Exception as exc:
        logger.info("usertasks: batched acknowledgement failed (%s); acknowledging one by one", exc)
        return False
    for message in messages:
        after(message)
    return True


def _dramatiqs_own(consumer, broker):
    """Whether ``consumer`` (windowed) and ``broker`` acknowledge as Dramatiq's own Redis consumer
    and broker do, so that ``_ACK_MANY`` does the same."""
    from dramatiq.brokers.redis import RedisBroker, _RedisConsumer

    from .broker import _enqueue_chunk, _enqueue_scripted

    cls = type(consumer)
    return (
        isinstance(consumer, _Windowed) and len(cls.__bases__) > 1 and issubclass(cls.__bases__[1], _RedisConsumer)
        and cls.__bases__[1].ack is _RedisConsumer.ack and _enqueue_chunk(broker) is _enqueue_scripted
        and isinstance(broker, RedisBroker)
    )


def _ack_through_pipeline(consumer, broker, messages, before):
    import copy

    from .broker import into_pipeline

    pipe = broker.client.pipeline(transaction=False)
    acking = copy.copy(consumer)  # shares the consumer's count of outstanding messages
    acking.broker = into_pipeline(broker, pipe)
    for message in messages:
        before(message)
        acking.ack(message)
    pipe.execute()


_ackers = PerProcess(Acker)


def get_acker():
    return _ackers.get()


def drain(timeout=30):
    """Wait for this process's deferred acknowledgements (at consumer shutdown)."""
    a = _ackers.current()
    return True if a is None else a.drain(timeout)
