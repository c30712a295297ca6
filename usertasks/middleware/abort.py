"""Cancel on the worker side: skip canceled messages, deliver cancels to running tasks, and
interrupt tasks that ignore them.

* Before the actor is called, a message whose task is canceled (abort flag raised, or row
  already final) is skipped with :class:`dramatiq.middleware.SkipMessage`: the message is
  acknowledged, not dead-lettered, and the body never runs.
* While tasks run, the :class:`AbortPoller` thread this middleware owns (as Dramatiq's
  ``TimeLimit`` owns its timeout manager) reads the flags of all running tasks of the process in
  one round trip every ``poll_interval`` seconds and marks their contexts, so ``step()`` /
  ``check_abort()`` / ``abort_requested`` need no I/O.  It also watches the tasks a Redis
  consumer claimed when it fetched their messages (``usertasks.abort.prefetch``), and ends those
  canceled before they started.
* A task still running ``abort_grace`` seconds after it saw the cancel is interrupted with
  :class:`~usertasks.exceptions.ForcedAbort`, the way ``TimeLimit`` interrupts a worker thread,
  and ends Canceled.

This middleware must come *before* :class:`~usertasks.middleware.UserTaskTracking`, so that a
skipped message never shows as started.
"""

import logging
import threading
import time

from dramatiq.middleware import Middleware, SkipMessage
from dramatiq.middleware.threading import raise_thread_exception

from .. import transitions
from ..abort import FIRST, SKIP, clear_flags, get_backend, prefetch
from ..actors import UserTaskActor
from ..exceptions import ForcedAbort
from ..process import PerProcess
from ..protocol import PARENT_OPTION, PREFETCH_CLAIM, STATUS_OPTION, WAIT_START
from ..states import FINAL_STATES
from ..writer import get_writer

# The models are imported where they are used (once the app registry is ready), by absolute
# name: see usertasks.middleware.tracking.

logger = logging.getLogger("usertasks.abort")

__all__ = ["AbortPoller", "UserTaskAbort", "get_poller"]

#: Seconds between two attempts to reach an abort store that failed.
RETRY_AFTER = 1.0
#: Seconds the poller keeps looking after its last work before it sleeps until woken (a task
#: that starts wakes it before its context is registered: it must look again shortly).
IDLE_GRACE = 2.0


class AbortPoller:
    """One thread per worker process: delivers cancels to running tasks, forces stops.

    It sleeps while the process runs no tracked task and watches no claimed message, and wakes
    when one starts (:meth:`wake`); otherwise it reads the flags once per poll interval (50 ms
    with Redis, 250 ms with the database), and checks every running task's grace period."""

    def __init__(self):
        self._cond = threading.Condition()
        self._failing = False
        self._next_try = 0.0
        self._stopping = False
        self._thread = None
        self._idle_until = 0.0
        self._asleep = False  # waiting for wake() with no deadline
        self.running = False  # the thread was started and not stopped
        self.polls = 0  # reads of the flags (for tests and benchmarks)

    # -- the thread ----------------------------------------------------------------------------

    def start(self):
        """Start the thread (idempotent)."""
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="usertasks-abort-poller", daemon=True)
                self._thread.start()
            self.running = True
        return self

    def stop(self, timeout=5):
        with self._cond:
            self._stopping = True
            self.running = False
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def wake(self):
        """Something to watch is coming: look from now on.  Called for every message a worker
        thread takes, so it costs nothing while the poller is looking anyway (a busy poller
        keeps looking for :data:`IDLE_GRACE` after its last work; the thing to watch is there
        long before then)."""
        if not self._asleep and time.monotonic() < self._idle_until - IDLE_GRACE / 2:
            return
        with self._cond:
            self._idle_until = time.monotonic() + IDLE_GRACE
            self._cond.notify()

    def _run(self):
        while True:
            now = time.monotonic()
            try:
                busy = self._has_work()
                if busy:
                    self.tick(now)
            except Exception:  # never let the thread die: cancels would no longer arrive
                logger.exception("usertasks: abort poller failed")
                busy, self._next_try = True, now + RETRY_AFTER
            interval = self.interval
            with self._cond:
                if self._stopping:
                    return
                now = time.monotonic()
                if busy:
                    self._idle_until = now + IDLE_GRACE
                    self._cond.wait(max(0.0, self._next_try - now))
                elif now < self._idle_until:
                    self._cond.wait(interval)
                else:
                    self._asleep = True
                    self._cond.wait()  # until wake() or stop()
                    self._asleep = False

    @staticmethod
    def _has_work():
        return bool(prefetch.watched()) or any(c.tracked for c in get_writer().running())

    @property
    def interval(self):
        try:
            return get_backend().poll_interval
        except Exception:
            return RETRY_AFTER

    # -- one tick ------------------------------------------------------------------------------

    def tick(self, now):
        """Read the flags if a read is due, deliver them, and force the stop of the tasks whose
        grace period has passed."""
        tracked = [c for c in get_writer().running() if c.tracked]
        if now >= self._next_try:
            self._next_try = now + self.interval
            waiting = [c for c in tracked if not c.abort_requested]
            claimed = prefetch.watched()
            if waiting or claimed:
                self.poll(waiting, now, claimed)
        for ctx in tracked:
            if ctx.abort_requested and not ctx.forced and now - ctx.cancel_seen_at >= ctx.abort_grace:
                force(ctx)

    def poll(self, contexts, now, claimed=None):
        claimed = claimed or {}
        try:
            # A task stops when its own flag or its container's is raised (fan-out, pipeline).
            ids = {c.status_id for c in contexts}
            ids.update(c.parent_id for c in contexts if c.parent_id is not None)
            ids.update(claimed)
            ids.update(parent for parent in claimed.values() if parent is not None)
            flagged = get_backend().flagged(sorted(ids))
            self.polls += 1
        except Exception as exc:
            self._next_try = now + RETRY_AFTER
            if not self._failing:
                self._failing = True
                logger.warning(
                    "usertasks: cannot read abort flags (%s); running tasks go on, and cancels reach "
                    "them once the store answers again",
                    exc,
                )
            return
        if self._failing:
            self._failing = False
            logger.warning("usertasks: abort flags readable again")
        for ctx in contexts:
            if ctx.status_id in flagged or ctx.parent_id in flagged:
                ctx.request_abort()
        for status_id, parent_id in claimed.items():
            if (status_id in flagged or parent_id in flagged) and prefetch.mark_canceled(status_id):
                # Claimed when fetched, not started yet: end it Canceled now (not when a worker
                # thread gets to it); its message is skipped then.
                get_writer().submit(transitions.cancel_before_start(status_id, parent_id))


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


def _new_poller():
    poller = AbortPoller()
    prefetch.listeners.append(poller.wake)
    return poller


_pollers = PerProcess(_new_poller)


def get_poller():
    """This process's abort poller, started (and again in a forked child)."""
    poller = _pollers.get()
    return poller if poller.running else poller.start()


class UserTaskAbort(Middleware):
    """Skips canceled messages and owns the abort poller; see the module docstring."""

    def after_worker_boot(self, broker, worker):
        get_poller()

    def after_worker_shutdown(self, broker, worker):
        poller = _pollers.current()
        if poller is not None:
            poller.stop()

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
        get_poller().wake()  # a task starts: it has something to watch
        claimed = vars(message).get(PREFETCH_CLAIM)  # set on the proxy, if at all (no forwarding)
        if claimed is not None:
            reason, wait = self.claimed_at_fetch(status_id, claimed)
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

    def claimed_at_fetch(self, status_id, result):
        """:meth:`claim`, for a message its consumer claimed when it fetched it."""
        if prefetch.take(status_id) or result == SKIP:
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
            # attempt that then failed and is being retried, or a message claimed when fetched.
            # Guarded: a final row stays as is.
            get_writer().submit(transitions.cancel_before_start(status_id, message.options.get(PARENT_OPTION))).wait()
        clear_flags([status_id])
        logger.info("usertasks: task %s is canceled; message %s skipped", status_id, message.message_id)
        raise SkipMessage(f"task {status_id} is canceled")
