"""Cancel on the worker side: skip canceled messages, deliver cancels to running tasks, and
interrupt tasks that ignore them.

* Before the actor is called, a message whose task is canceled (abort flag raised, or row
  already final) is skipped with :class:`dramatiq.middleware.SkipMessage`: the message is
  acknowledged, not dead-lettered, and the body never runs.
* While tasks run, :class:`AbortPoller` (a hook of the per-process writer thread) reads the flags
  of all running tasks of the process in one round trip every ``poll_interval`` seconds and
  marks their contexts, so ``step()`` / ``check_abort()`` / ``abort_requested`` need no I/O.
* A task still running ``abort_grace`` seconds after it saw the cancel is interrupted with
  :class:`~usertasks.exceptions.ForcedAbort`, the way Dramatiq's ``TimeLimit`` interrupts a
  worker thread, and ends Canceled.

This middleware must come *before* :class:`~usertasks.middleware.UserTaskTracking`, so that a
skipped message never shows as started.
"""

import logging
import threading
import time

from dramatiq.middleware import Middleware, SkipMessage
from dramatiq.middleware.threading import raise_thread_exception

from ..abort import FIRST, SKIP, clear_flags, get_backend
from ..actors import UserTaskActor
from ..exceptions import ForcedAbort
from ..protocol import PARENT_OPTION, PREFETCH_CLAIM, STATUS_OPTION, WAIT_START
from ..states import ACTIVE_STATES, FINAL_STATES, State
from ..writer import Op, get_writer

# The models are imported where they are used (once the app registry is ready), by absolute
# name: see usertasks.middleware.tracking.

logger = logging.getLogger("usertasks.abort")

#: Seconds between two attempts to reach an abort store that failed.
RETRY_AFTER = 1.0


class AbortPoller:
    """Run by the writer thread with the running contexts: delivers cancels, forces stops."""

    def __init__(self):
        self._failing = False
        self._next_try = 0.0

    @property
    def interval(self):
        try:
            return get_backend().poll_interval
        except Exception:
            return RETRY_AFTER

    @property
    def active(self):
        """Whether there is something to watch besides the running tasks: messages claimed at
        prefetch, not started yet."""
        return bool(_prefetched)

    def due(self, now):
        """Seconds until the next read of the flags is due (the writer thread sleeps no longer
        while there is something to watch); at most one interval, so that a cancel's grace
        period is still checked every interval while an unreachable store is retried later."""
        return max(0.0, min(self._next_try - now, self.interval))

    def __call__(self, running):
        tracked = [c for c in running if c.tracked]
        now = time.monotonic()
        # At most once per poll interval: the writer thread runs its pollers after every batch,
        # and a busy writer writes hundreds of batches a second.  The next read is scheduled
        # even when there is nothing to read (every running task already told to stop): the
        # writer sleeps until ``due()``, which must not stay at zero.
        if now >= self._next_try:
            self._next_try = now + self.interval
            waiting = [c for c in tracked if not c.abort_requested]
            prefetched = _prefetched_now()
            if waiting or prefetched:
                self.poll(waiting, now, prefetched)
        for ctx in tracked:
            if ctx.abort_requested and not ctx.forced and now - ctx.cancel_seen_at >= ctx.abort_grace:
                force(ctx)

    def poll(self, contexts, now, prefetched=None):
        prefetched = prefetched or {}
        try:
            # A task stops when its own flag or its container's is raised (fan-out, pipeline).
            ids = {c.status_id for c in contexts}
            ids.update(c.parent_id for c in contexts if c.parent_id is not None)
            ids.update(prefetched)
            ids.update(parent for parent in prefetched.values() if parent is not None)
            flagged = get_backend().flagged(sorted(ids))
        except Exception as exc:
            self._next_try = now + RETRY_AFTER
            if not self._failing:
                self._failing = True
                logger.warning(
                    "usertasks: cannot read abort flags (%s); running tasks go on, and cancels reach "
                    "them once the store answers again", exc,
                )
            return
        if self._failing:
            self._failing = False
            logger.warning("usertasks: abort flags readable again")
        for ctx in contexts:
            if ctx.status_id in flagged or ctx.parent_id in flagged:
                ctx.request_abort()
        for status_id, parent_id in prefetched.items():
            if status_id in flagged or parent_id in flagged:
                _cancel_prefetched(status_id, parent_id)


def force(ctx):
    """Interrupt the body of ``ctx`` with :class:`ForcedAbort` (once)."""
    with ctx.body_lock:
        if ctx.forced or not ctx.in_body:
            return
        ctx.forced = True
        logger.warning(
            "usertasks: task %s did not stop %.3gs after its cancel; interrupting it", ctx.status_id, ctx.abort_grace
        )
        raise_thread_exception(ctx.thread_id, ForcedAbort)


_poller = AbortPoller()


def install_poller(writer=None):
    """Register the abort poller on this process's writer (idempotent)."""
    writer = writer or get_writer()
    if _poller not in writer.pollers:
        writer.pollers.append(_poller)
    return writer


class UserTaskAbort(Middleware):
    """Skips canceled messages and installs the abort poller; see the module docstring."""

    def after_worker_boot(self, broker, worker):
        install_poller()

    def before_process_message(self, broker, message):
        options = message.options
        status_id = options.get(STATUS_OPTION)
        if status_id is None:
            return
        try:
            actor = broker.get_actor(message.actor_name)
        except Exception:
            return
        if not isinstance(actor, UserTaskActor):
            return
        install_poller()
        claimed = vars(message).get(PREFETCH_CLAIM)  # set on the proxy, if at all (no forwarding)
        if claimed is not None:
            reason, wait = self.claimed_at_prefetch(status_id, claimed)
        else:
            reason, wait = self.claim(status_id, options.get(PARENT_OPTION))
        # Read by the tracking middleware: must the body wait until its start is stored?
        setattr(message, WAIT_START, wait)
        if reason is not None:
            self.skip(message, status_id, reason)

    def claim(self, status_id, parent_id):
        """``(reason to skip or None, whether the body must wait for its stored start)``.

        With an atomic store (Redis) a first claim needs no database round trip: the store
        alone linearizes the claim with ``cancel()``.  A redelivered message, a store that
        cannot tell, or a store that does not answer take the safe path: the database says
        whether the task may run, and the body waits until its start is stored (guarded)."""
        try:
            result = get_backend().claim(status_id, parent_id)
        except Exception as exc:
            logger.info("usertasks: cannot claim task %s in the abort store (%s); asking the database", status_id, exc)
            return self.canceled(status_id), True
        if result == SKIP:
            return "flag", True
        if result == FIRST:
            return None, False
        return self.canceled(status_id), True

    def claimed_at_prefetch(self, status_id, result):
        """:meth:`claim`, for a message its consumer claimed when it prefetched it."""
        with _prefetch_lock:
            _prefetched.pop(status_id, None)
            flagged = status_id in _flagged_prefetched
            _flagged_prefetched.discard(status_id)
        if result == SKIP or flagged:
            return "flag", True
        if result == FIRST:
            return None, False
        return self.canceled(status_id), True

    @staticmethod
    def canceled(status_id):
        """Why the message of ``status_id`` must not run, or ``None`` (asks the database)."""
        from usertasks.models import UserTaskStatus

        row = UserTaskStatus.objects.filter(pk=status_id).values_list("state", "cancel_requested").first()
        if row is None:
            return None  # no row: the tracking middleware runs it untracked and says so
        state, cancel_requested = row
        if state in FINAL_STATES:
            return "final"
        if cancel_requested is not None:
            # Canceled while a run was going on, and now delivered again (a retry, a redelivery
            # after the worker died): the cancel stands.
            return "flag"
        return None

    @staticmethod
    def skip(message, status_id, reason):
        if reason == "flag":
            # Normally cancel() already made the row Canceled; not when the cancel hit a running
            # attempt that then failed and is being retried, or a message claimed at prefetch.
            # Guarded: a final row stays as is.
            get_writer().submit(_canceled_op(status_id, message.options.get(PARENT_OPTION))).wait()
        clear_flags([status_id])
        logger.info("usertasks: task %s is canceled; message %s skipped", status_id, message.message_id)
        raise SkipMessage(f"task {status_id} is canceled")


def _canceled_op(status_id, parent_id):
    """The writer op that ends a task canceled before its run started (guarded: a final row
    stays as it is; a fan-out child is counted on its container)."""
    from usertasks.models import EventKind, UserTaskEvent

    event = UserTaskEvent(status_id=status_id, kind=EventKind.CANCELED, detail="Canceled before this attempt started.")
    return Op("update", fields={
        "_where": {"pk": status_id, "state__in": ACTIVE_STATES},
        "state": State.CANCELED, "unique_key": None, "worker": "", "finished": event.created,
        "_parent": parent_id,
    }, events=[event])


# -- claims made when a Redis consumer prefetches messages ---------------------------------------
#
# The claim of a tracked message (see UserTaskAbort.claim) used to be a round trip of the worker
# thread that runs it, and most of that thread's time per short task.  A Redis consumer of a
# worker with usertasks claims instead the messages it hands out, a fetched batch at a time, in
# one round trip (``claim_prefetched``, called by ``usertasks.acks._Windowed``).  A cancel that
# comes between the claim and the run sees the claim and treats the task as running: it raises
# the flag, and the abort poller, which watches the flags of claimed messages too, ends the task
# Canceled at once (the writer's guarded update) and has its message skipped when a worker
# thread takes it.

#: Seconds after which a prefetched claim no longer watched is forgotten (its consumer went away
#: with the message; the broker delivers it again, and that delivery claims again).
PREFETCH_FORGET = 3600.0

_prefetch_lock = threading.Lock()
_prefetched = {}  # status id -> (parent id, monotonic time of the claim): claimed, not started
_flagged_prefetched = set()  # of those, the ones already ended Canceled by the poller


def _prefetched_now():
    """``{status id: parent id}`` of the claimed messages not started yet (old ones forgotten)."""
    if not _prefetched:
        return {}
    horizon = time.monotonic() - PREFETCH_FORGET
    with _prefetch_lock:
        for status_id in [k for k, (_, at) in _prefetched.items() if at < horizon]:
            del _prefetched[status_id]
            _flagged_prefetched.discard(status_id)
        return {k: parent for k, (parent, _) in _prefetched.items() if k not in _flagged_prefetched}


def _cancel_prefetched(status_id, parent_id):
    """The poller saw the flag of a claimed message not started yet: end its task Canceled now
    (not when a worker thread gets to it), and have the message skipped."""
    with _prefetch_lock:
        if status_id not in _prefetched or status_id in _flagged_prefetched:
            return
        _flagged_prefetched.add(status_id)
    get_writer().submit(_canceled_op(status_id, parent_id))  # from the writer thread: no wait


def fetch_claimed(consumer):
    """Called by a Redis consumer whose cache is empty: fetch the next batch and claim its
    tracked messages in ONE round trip (``AbortBackend.fetch_and_claim``), on a connection of the
    consumer thread's own.  Returns the batch (the consumer's new ``message_cache``, maybe empty),
    or ``None`` when Dramatiq's own fetch must do it: a delay queue, a store on another Redis, an
    encoder other than JSON (the script reads the messages), and the fetches that Dramatiq would
    use for queue maintenance (requeueing the messages of dead workers), at Dramatiq's rate."""
    count = consumer.prefetch - consumer.outstanding_message_count
    backend = _fetching_backend(consumer)
    broker = consumer.broker
    if count <= 0 or backend is None or broker._should_do_maintenance("fetch"):
        consumer._usertasks_scripted = False
        return None
    try:
        data, claims = backend.fetch_and_claim(broker, consumer.queue_name, count, STATUS_OPTION, PARENT_OPTION)
    except Exception as exc:
        import redis
        from dramatiq.errors import ConnectionClosed

        if isinstance(exc, redis.RedisError):
            raise ConnectionClosed(exc) from None  # what Dramatiq's fetch raises: the consumer reconnects
        # Not an outage but a reply this code cannot read: leave this consumer to Dramatiq's
        # fetch from now on (a batch the script took comes back when this worker stops).
        logger.exception("usertasks: fetch-and-claim failed on queue %s; using Dramatiq's fetch", consumer.queue_name)
        consumer._usertasks_fetcher = (backend, None)
        consumer._usertasks_scripted = False
        return None
    consumer._usertasks_scripted = True
    consumer.message_cache = data
    _record_claims(consumer, [(message_id, status_id, parent_id) for message_id, status_id, parent_id, _ in claims],
                   [result for *_, result in claims])
    return data


def _fetching_backend(consumer):
    """The abort backend that can fetch and claim for ``consumer``, or ``None`` (decided once per
    consumer and backend)."""
    backend = get_backend()
    cached = getattr(consumer, "_usertasks_fetcher", None)
    if cached is not None and cached[0] is backend:
        return cached[1]
    import dramatiq
    from dramatiq.common import q_name

    usable = (
        getattr(backend, "fetch_and_claim", None) is not None and backend.atomic_claims
        and q_name(consumer.queue_name) == consumer.queue_name
        and type(dramatiq.get_encoder()) is dramatiq.JSONEncoder
        and hasattr(consumer.broker, "_should_do_maintenance") and hasattr(consumer.broker, "broker_id")
        and backend.shares_server(consumer.broker.client)
    )
    consumer._usertasks_fetcher = (backend, backend if usable else None)
    return consumer._usertasks_fetcher[1]


def claim_prefetched(consumer, proxy):
    """Called by a Redis consumer for each message it hands to the worker threads.  A batch that
    :func:`fetch_claimed` fetched is claimed already.  Otherwise the first message of a fetched
    batch claims itself and every message still in the consumer's cache in one round trip; the
    others find their result ready.  On any failure nothing is attached, and the worker thread
    claims the message itself."""
    claims = getattr(consumer, "_usertasks_claims", None)
    if claims and proxy.message_id in claims:
        setattr(proxy, PREFETCH_CLAIM, claims.pop(proxy.message_id))
        return
    if getattr(consumer, "_usertasks_scripted", False):
        return  # not a tracked message (or one the script could not read: its thread claims it)
    try:
        from dramatiq import Message
        from dramatiq.common import q_name

        if q_name(consumer.queue_name) != consumer.queue_name:
            return  # a delay queue: its messages are moved, not run
        backend = get_backend()
        if not backend.atomic_claims or backend.claim_many is None:
            return
        batch = []
        for message in [proxy, *(_decoded(Message, data) for data in list(consumer.message_cache))]:
            task = _claimable(consumer.broker, message)
            if task is not None:
                batch.append((message.message_id, *task))
        if not batch:
            return
        results = backend.claim_many([(status_id, parent_id) for _, status_id, parent_id in batch])
    except Exception as exc:
        logger.debug("usertasks: could not claim prefetched messages (%s); worker threads claim them", exc)
        return
    _record_claims(consumer, batch, results)
    result = consumer._usertasks_claims.pop(proxy.message_id, None)
    if result is not None:
        setattr(proxy, PREFETCH_CLAIM, result)


def _record_claims(consumer, batch, results):
    """Keep the results of claims made at prefetch (``batch``: ``(message_id, status_id,
    parent_id)``) for the messages as the consumer hands them out, and have the poller watch
    the tasks claimed first."""
    now = time.monotonic()
    with _prefetch_lock:
        idle = not _prefetched  # the poller had nothing to watch: the writer may sleep unbounded
        for (_, status_id, parent_id), result in zip(batch, results):
            if result == FIRST:
                _prefetched[status_id] = (parent_id, now)
        watch = idle and bool(_prefetched)
    consumer._usertasks_claims = {message_id: result for (message_id, _, _), result in zip(batch, results)}
    if watch:
        get_writer().wake()  # the writer keeps ticking for the poller from now on


def _decoded(message_class, data):
    try:
        return message_class.decode(data)
    except Exception:
        return None


def _claimable(broker, message):
    """``(status_id, parent_id)`` of a tracked message of a user task, else ``None``."""
    if message is None:
        return None
    status_id = message.options.get(STATUS_OPTION)
    if status_id is None:
        return None
    try:
        actor = broker.get_actor(message.actor_name)
    except Exception:
        return None
    if not isinstance(actor, UserTaskActor):
        return None
    return status_id, message.options.get(PARENT_OPTION)
