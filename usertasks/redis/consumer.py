"""The Redis consumer of :class:`usertasks.redis.RedisBroker`.

It is Dramatiq's own Redis consumer (``_RedisConsumer``: its message cache, its decoding, its
``ack`` and ``nack``) with four changes, each reached through the consumer's documented
interface (``__next__``, ``ack``, ``nack``, ``close``):

* **Fetch and claim in one round trip.**  A fetch of a queue also claims the tracked messages
  it takes (``fetch.lua``: Dramatiq's ``fetch``, then ``usertasks.abort``'s claim of each), so
  a worker thread need not make a round trip of its own before it runs one.  Where the script
  cannot (a delay queue, an abort store on another Redis, an encoder other than JSON, and the
  fetches that do Dramatiq's queue maintenance, at Dramatiq's rate), Dramatiq's fetch runs and
  the first message of the batch claims the others in one round trip.
* **A full window waits for room.**  When as many messages as it may prefetch are out, it waits
  until one is acknowledged (or handed to the acker) instead of Dramatiq's blind sleep, an idle
  backoff that would leave the worker threads idle for most of it.
* **Idle backoff, woken by sends.**  An empty queue backs off as Dramatiq's consumer does, but
  listening on the queue's wake channel (:mod:`usertasks.redis.wakeup`), so a send to the queue
  ends it at once (``USERTASKS["WAKE_CONSUMERS"]``).
* **Acknowledgements after the commit, off the worker thread.**  A message whose run's end the
  tracking middleware left to commit (``protocol.PENDING_END``) is acknowledged by the acker
  (:mod:`usertasks.redis.acks`) once that end is committed; the worker thread goes on at once.

Every proxy it hands out is marked with the consumer (``protocol.DEFERRING_CONSUMER``), so the
middleware knows it may leave the acknowledgement to it (:meth:`can_defer`).
"""

import logging
import threading
import time

import dramatiq
import redis
from dramatiq import Message
from dramatiq.brokers.redis import _RedisConsumer
from dramatiq.common import compute_backoff, current_millis, q_name
from dramatiq.errors import ConnectionClosed

from ..abort import FIRST, get_backend, prefetch
from ..conf import app_settings
from ..protocol import DEFERRING_CONSUMER, PARENT_OPTION, PENDING_END, PREFETCH_CLAIM, STATUS_OPTION
from ..rediscalls import Script, bounded
from .acks import MAX_PENDING, get_acker
from .wakeup import Waker, channel

logger = logging.getLogger("usertasks.redis")

__all__ = ["Consumer"]

_FETCH = Script.load(__file__, "fetch.lua")
#: Most messages one fetch takes (Lua's ``unpack`` has a limit).
FETCH_MAX = 1000


class Consumer(_RedisConsumer):
    """See the module's docstring."""

    def __init__(self, broker, queue_name, prefetch_count, timeout):
        super().__init__(broker, queue_name, prefetch_count, timeout)
        self.room = threading.Event()  # set whenever a message stops counting against the window
        self.waker = (
            Waker(bounded(broker.client), channel(broker.namespace, queue_name))
            if app_settings.WAKE_CONSUMERS
            else None
        )
        self.acker = get_acker()
        self._claims = {}  # message id -> claim result, for the messages of the cached batch
        self._scripted = False  # the cached batch was fetched (and claimed) by fetch.lua
        self._fetcher = (None, False)  # (abort backend, whether fetch.lua can claim for it)

    # -- handing messages out ------------------------------------------------------------------

    def __next__(self):
        if not self.message_cache and self.outstanding_message_count >= self.prefetch:
            self.room.clear()
            if self.outstanding_message_count >= self.prefetch:  # checked again after the clear
                self.room.wait(self.timeout / 1000)
            if self.outstanding_message_count >= self.prefetch:
                if self.waker is not None:
                    self.waker.drain()  # what was published while the window was full
                return None  # Dramatiq's loop goes on: delayed messages, shutdown
        if not self.message_cache:
            if self.waker is not None:
                self.waker.drain_if_due()  # what was published while this consumer kept finding messages
            if not self._fetch():
                # Nothing queued: back off as Dramatiq's consumer does, woken early by a send.
                self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
                if self.waker is None:
                    time.sleep(backoff_ms / 1000)
                else:
                    self.waker.wait(backoff_ms / 1000)
                return None
        proxy = super().__next__()  # the cache is not empty: Dramatiq's consumer pops and decodes
        if proxy is not None:
            setattr(proxy, DEFERRING_CONSUMER, self)
            self._attach_claim(proxy)
        return proxy

    def _fetch(self):
        """Fill the message cache with the next batch; returns it (empty: nothing queued)."""
        count = min(self.prefetch - self.outstanding_message_count, FETCH_MAX)
        backend = self._claiming_backend()
        try:
            if backend is not None and not self.broker.maintenance_due():
                try:
                    self.message_cache = self._fetch_and_claim(backend, count)
                    self._scripted = True
                    return self.message_cache
                except redis.RedisError:
                    raise
                except Exception:
                    # Not an outage but a reply this code cannot read: leave this consumer to
                    # Dramatiq's fetch from now on (a batch the script took comes back when
                    # this worker stops).
                    logger.exception(
                        "usertasks: fetch-and-claim failed on queue %s; using Dramatiq's fetch", self.queue_name
                    )
                    self._fetcher = (backend, False)
                    backend = None
            self._scripted = False
            # Where fetch.lua would have run, this fetch is the one that does the maintenance.
            self.message_cache = self.broker.fetch(self.queue_name, count, maintenance=backend is not None)
        except redis.RedisError as exc:
            raise ConnectionClosed(exc) from None  # what Dramatiq's fetch raises: the consumer reconnects
        return self.message_cache

    def _fetch_and_claim(self, backend, count):
        broker = self.broker
        args = (
            self.queue_name,
            broker.broker_id,
            current_millis(),
            count,
            backend.prefix,
            backend.claim_prefix,
            backend.claim_ttl,
            STATUS_OPTION,
            PARENT_OPTION,
        )
        reply = _FETCH(broker.client, (broker.namespace,), args)
        if not reply:
            return []
        data = [d or None for d in reply[0].split(b"\0")]
        claims, first = {}, []
        for entry in reply[1:]:
            result, task, parent, message_id = entry.split(b"\0", 3)
            result, task, parent = int(result), int(task), int(parent) if parent else None
            claims[message_id.decode()] = result
            if result == FIRST:
                first.append((task, parent))
        self._claims = claims
        prefetch.record(first)
        return data

    def _claiming_backend(self):
        """The abort store fetch.lua can claim in, or ``None`` (decided once per store)."""
        backend = get_backend()
        if self._fetcher[0] is not backend:
            usable = (
                backend.atomic_claims
                and backend.shares_server(self.broker.client)
                and q_name(self.queue_name) == self.queue_name
                and type(dramatiq.get_encoder()) is dramatiq.JSONEncoder
            )
            self._fetcher = (backend, usable)
        return backend if self._fetcher[1] else None

    def _attach_claim(self, proxy):
        """Attach the claim of ``proxy`` made with its batch.  A batch Dramatiq's fetch took is
        claimed by its first message, in one round trip for all of it; the others find their
        result ready.  On any failure nothing is attached, and the worker thread claims the
        message itself."""
        result = self._claims.pop(proxy.message_id, None)
        if result is not None:
            setattr(proxy, PREFETCH_CLAIM, result)
            return
        if self._scripted or q_name(self.queue_name) != self.queue_name:
            return  # untracked (or unreadable) message; a delay queue's messages are moved, not run
        try:
            backend = get_backend()
            if not backend.atomic_claims or backend.claim_many is None:
                return
            batch = [
                (m.message_id, *t)
                for m in [proxy, *map(_decoded, list(self.message_cache))]
                if (t := self._claimable(m)) is not None
            ]
            if not batch:
                return
            results = backend.claim_many([(status_id, parent_id) for _, status_id, parent_id in batch])
        except Exception as exc:
            logger.debug("usertasks: could not claim prefetched messages (%s); worker threads claim them", exc)
            return
        self._claims = {message_id: result for (message_id, _, _), result in zip(batch, results)}
        prefetch.record([(s, p) for (_, s, p), result in zip(batch, results) if result == FIRST])
        result = self._claims.pop(proxy.message_id, None)
        if result is not None:
            setattr(proxy, PREFETCH_CLAIM, result)

    def _claimable(self, message):
        """``(status_id, parent_id)`` of a tracked message of a user task, else ``None``."""
        if message is None:
            return None
        status_id = message.options.get(STATUS_OPTION)
        if status_id is None:
            return None
        try:
            actor = self.broker.get_actor(message.actor_name)
        except Exception:
            return None
        if getattr(actor, "usertask_options", None) is None:  # not a @user_task
            return None
        return status_id, message.options.get(PARENT_OPTION)

    # -- acknowledging -------------------------------------------------------------------------

    def can_defer(self):
        """Whether the acknowledgement of a message of this consumer can wait for its run's
        commit on the acker (which holds at most :data:`~usertasks.redis.acks.MAX_PENDING`)."""
        return self.acker.pending < MAX_PENDING

    def ack(self, message):
        if not self._deferred(message, reject=False):
            try:
                super().ack(message)
            finally:
                self.room.set()

    def nack(self, message):
        if not self._deferred(message, reject=True):
            try:
                super().nack(message)
            finally:
                self.room.set()

    def _deferred(self, message, *, reject):
        change = vars(message).get(PENDING_END)  # set on the proxy, if at all (never forwarded)
        if change is None or change.done.is_set():
            return False
        setattr(message, PENDING_END, None)
        # The run is over: it no longer counts against the prefetch window (the consumer would
        # otherwise stop fetching while ends wait for a commit); the acker's own limit bounds
        # what waits.
        self.queued_message_ids.discard(message.message_id)
        self.room.set()
        self.acker.defer(self, change, message, reject=reject)
        return True

    def ack_now(self, message):
        """Acknowledge ``message`` (the acker, once its run's end is committed)."""
        try:
            return super().ack(message)
        finally:
            self.room.set()

    def reject_now(self, message):
        """Reject ``message`` to the dead-letter queue (the acker, once its end is committed)."""
        try:
            return super().nack(message)
        finally:
            self.room.set()

    def acknowledged(self, messages):
        """The acker acknowledged ``messages`` in one round trip."""
        for message in messages:
            self.queued_message_ids.discard(message.message_id)
        self.room.set()

    def close(self):
        if not self.acker.drain(self):
            logger.error(
                "usertasks: messages of queue %s left unacknowledged at shutdown; the broker will deliver them again",
                self.queue_name,
            )
        waker, self.waker = self.waker, None
        if waker is not None:
            waker.close()
        return super().close()


def _decoded(data):
    try:
        return Message.decode(data)
    except Exception:
        return None
