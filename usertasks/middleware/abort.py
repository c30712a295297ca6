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
import time

from dramatiq.middleware import Middleware, SkipMessage
from dramatiq.middleware.threading import raise_thread_exception

from ..actors import STATUS_OPTION, UserTaskActor
from ..exceptions import ForcedAbort
from ..states import ACTIVE_STATES, FINAL_STATES, State

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
            from ..abort import get_backend

            return get_backend().poll_interval
        except Exception:
            return RETRY_AFTER

    def __call__(self, running):
        tracked = [c for c in running if c.tracked]
        if not tracked:
            return
        waiting = [c for c in tracked if not c.abort_requested]
        now = time.monotonic()
        if waiting and now >= self._next_try:
            self.poll(waiting, now)
        for ctx in tracked:
            if ctx.abort_requested and not ctx.forced and now - ctx.cancel_seen_at >= ctx.abort_grace:
                force(ctx)

    def poll(self, contexts, now):
        from ..abort import get_backend

        try:
            # A task stops when its own flag or its container's is raised (fan-out, pipeline).
            ids = {c.status_id for c in contexts}
            ids.update(c.parent_id for c in contexts if c.parent_id is not None)
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
    from ..writer import get_writer

    writer = writer or get_writer()
    if _poller not in writer.pollers:
        writer.pollers.append(_poller)
    return writer


class UserTaskAbort(Middleware):
    """Skips canceled messages and installs the abort poller; see the module docstring."""

    def after_worker_boot(self, broker, worker):
        install_poller()

    def before_process_message(self, broker, message):
        status_id = message.options.get(STATUS_OPTION)
        if status_id is None:
            return
        try:
            actor = broker.get_actor(message.actor_name)
        except Exception:
            return
        if not isinstance(actor, UserTaskActor):
            return
        install_poller()
        from ..fanout import PARENT_OPTION

        reason, wait = self.claim(status_id, message.options.get(PARENT_OPTION))
        # Read by the tracking middleware: must the body wait until its start is stored?
        message._usertasks_wait_start = wait
        if reason is not None:
            self.skip(message, status_id, reason)

    def claim(self, status_id, parent_id):
        """``(reason to skip or None, whether the body must wait for its stored start)``.

        With an atomic store (Redis) a first claim needs no database round trip: the store
        alone linearizes the claim with ``cancel()``.  A redelivered message, a store that
        cannot tell, or a store that does not answer take the safe path: the database says
        whether the task may run, and the body waits until its start is stored (guarded)."""
        from ..abort import FIRST, SKIP, get_backend

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

    @staticmethod
    def canceled(status_id):
        """Why the message of ``status_id`` must not run, or ``None`` (asks the database)."""
        from ..models import UserTaskStatus

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
        from ..abort import clear_flags
        from ..models import EventKind, UserTaskEvent
        from ..writer import Op, get_writer

        if reason == "flag":
            # Normally cancel() already made the row Canceled; not when the cancel hit a running
            # attempt that then failed and is being retried.  Guarded: a final row stays as is.
            text = "Canceled before this attempt started."
            event = UserTaskEvent(status_id=status_id, kind=EventKind.CANCELED, detail=text)
            from ..fanout import PARENT_OPTION

            op = Op("update", fields={
                "_where": {"pk": status_id, "state__in": ACTIVE_STATES},
                "state": State.CANCELED, "unique_key": None, "worker": "", "finished": event.created,
                "_parent": message.options.get(PARENT_OPTION),  # a fan-out child: counted on its container
            }, events=[event])
            get_writer().submit(op).wait()
        clear_flags([status_id])
        logger.info("usertasks: task %s is canceled; message %s skipped", status_id, message.message_id)
        raise SkipMessage(f"task {status_id} is canceled")
