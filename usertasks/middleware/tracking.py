"""Records every run of a user task in its status row, from Dramatiq's own hooks.

It must sit *before* ``Retries`` in the broker's middleware list: ``after_*`` hooks run in
reverse order, so it then sees the retry decision (``message.failed``) that ``Retries`` made.
The final state is stored (and committed) inside ``after_process_message``, before the worker
hands the message back to its consumer for acknowledgement.
"""

import logging
import sys
import traceback

from django.utils.functional import SimpleLazyObject
from dramatiq.middleware import Middleware, Retries, Shutdown, TimeLimitExceeded

from .. import transitions
from ..abort import clear_flags, get_backend
from ..actors import UserTaskActor
from ..conf import app_settings
from ..context import TaskContext, _current
from ..exceptions import Aborted, ForcedAbort
from ..protocol import CHILD_OPTION, DEFERRING_CONSUMER, PARENT_OPTION, PENDING_END, STATUS_OPTION, WAIT_START
from ..signals import emit_task_finished, receivers_act, task_finished
from ..states import State
from ..text import clip
from ..writer import get_writer, stop_writer

# The models are imported where they are used, once the app registry is ready, and by absolute
# name: the hooks below run for every message, and a relative import statement costs a call of
# Python code (``ModuleSpec.parent``) each time it runs.

logger = logging.getLogger("usertasks.middleware")

FINAL = (State.SUCCEEDED, State.FAILED, State.CANCELED)


class UserTaskTracking(Middleware):
    """Start, retry, success, failure and cancel of user tasks, written through the
    per-process writer (``usertasks.writer``)."""

    def before_process_message(self, broker, message):
        try:
            actor = broker.get_actor(message.actor_name)
        except Exception:
            return
        if not isinstance(actor, UserTaskActor):
            return
        options = message.options  # (a MessageProxy forwards each attribute read in Python)
        status_id = options.get(STATUS_OPTION)
        ctx = TaskContext(
            status_id=status_id,
            message_id=message.message_id,
            actor_name=actor.actor_name,
            attempt=options.get("retries", 0) + 1,
            options=actor.usertask_options,
        )
        ctx.broker_message = message
        ctx.parent_id = options.get(PARENT_OPTION)  # a fan-out child or pipeline stage
        _current.set(ctx)
        if status_id is None:
            return
        if CHILD_OPTION in options:
            # One of thousands of subtasks: its row says when it started and ended; the events
            # are kept for what goes wrong (failures, retries, cancels).
            ctx.quiet = not app_settings.FANOUT_CHILD_EVENTS
        # Set by UserTaskAbort: a first claim in an atomic abort store lets the body start at
        # once, and the writer may then fold this start into the run's end (one UPDATE for a
        # short task).  Otherwise the body waits until its guarded start is stored.
        ctx.wait_for_start = vars(message).get(WAIT_START, True)
        writer = get_writer()
        writer.register(ctx)
        ctx.start_op = writer.submit_start(transitions.start(ctx), defer=not ctx.wait_for_start)

    def before_enqueue(self, broker, message, delay):
        """``Retries`` is sending the retry of the running task: store Retrying first.

        ``after_*`` hooks run in reverse order, so ``Retries`` enqueues the retry before this
        middleware's ``after_process_message``.  Were Retrying written only then, the next
        attempt (short backoff, another worker) could start or even finish first and the
        Retrying write would be refused, losing its event and its count on a container.  Here
        it is committed before the retry exists."""
        ctx = _current.get()
        if ctx is None or not ctx.tracked or ctx.message_id != message.message_id or ctx.ended:
            return
        exception = sys.exc_info()[1]
        if exception is None:
            return  # not a retry of a failed run (e.g. an actor sending its own message again)
        get_writer().unregister(ctx)
        ctx.ended = True
        # ``message`` is the retry about to be sent; the outcome is that of the running one.
        state, kind, fields, detail = self.outcome(broker, ctx.broker_message, ctx, exception, retrying=True)
        self.end(ctx, state, kind, fields, detail)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        ctx = _current.get()
        if ctx is None or ctx.message_id != message.message_id:
            return
        _current.set(None)
        if not ctx.tracked or ctx.ended:
            return
        writer = get_writer()
        writer.unregister(ctx)
        state, kind, fields, detail = self.outcome(broker, message, ctx, exception)
        if state == State.CANCELED:
            # Canceled is an outcome, not an error: acknowledge, do not dead-letter.
            message.failed = False
        if state == State.SUCCEEDED and ctx.fanout:
            # A container's body returned: it ends with its last child (usertasks.fanout).
            self.body_done(ctx)
            return
        if _quiet_end(ctx, state, message):
            # Nothing to do after the commit but the acknowledgement: the message's consumer
            # leaves it to its acker, which makes it once the end is committed, and this thread
            # takes its next message now (usertasks.redis.acks).
            setattr(message, PENDING_END, self.submit_end(ctx, kind, fields, detail, lazy=True))
            return
        self.end(ctx, state, kind, fields, detail)

    def before_consumer_thread_shutdown(self, broker, thread):
        # Worker threads have stopped: commit their last ends now, so the consumer can have them
        # acknowledged before Dramatiq closes it (left unacknowledged, they would run again).
        try:
            get_writer().flush()
        except TimeoutError:
            logger.error("usertasks: could not store the last task states before shutdown")

    def after_skip_message(self, broker, message):
        ctx = _current.get()
        if ctx is not None and ctx.message_id == message.message_id:
            _current.set(None)
            if ctx.tracked:
                get_writer().unregister(ctx)
        status_id = message.options.get(STATUS_OPTION)
        if status_id is not None and message.failed:
            # Failed before it could run (AgeLimit): fail the row unless it is already final.
            change = transitions.expire_before_start(status_id, message.options.get(PARENT_OPTION))
            get_writer().submit(change).wait()

    def after_worker_shutdown(self, broker, worker):
        try:
            _requeue_abandoned(worker)
        finally:
            stop_writer()

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def outcome(broker, message, ctx, exception, retrying=None):
        """``(state, event kind, row fields, event detail)`` for how this run ended.
        ``retrying``: whether a retry is scheduled (default: read ``Retries``' decision)."""
        from usertasks.models import EventKind

        if exception is None:
            # The error of an earlier, retried attempt stays in the event history only.
            fields = {"state": State.SUCCEEDED, "error": "", "error_class": "", "traceback": ""}
            return State.SUCCEEDED, EventKind.SUCCEEDED, fields, ""
        if isinstance(exception, (Aborted, ForcedAbort)) or ctx.forced:
            detail = "Stopped by force after the grace period." if ctx.forced else ""
            return State.CANCELED, EventKind.CANCELED, {"state": State.CANCELED}, detail
        if isinstance(exception, Shutdown) and not message.failed:
            # The worker is stopping (ShutdownNotifications): the message goes back to the
            # broker, so the task waits for its next run instead of failing.
            text = "The worker stopped before the task finished; it will run again."
            return State.PENDING, EventKind.REQUEUED, {"state": State.PENDING}, text
        if isinstance(exception, TimeLimitExceeded):
            text = _timed_out_text(_time_limit(broker, message))
        else:
            text = str(exception) or type(exception).__name__
        fields = {
            "error": clip(text, 4000),
            "error_class": clip(f"{type(exception).__module__}.{type(exception).__qualname__}", 255),
            "traceback": "".join(traceback.format_exception(type(exception), exception, exception.__traceback__)),
        }
        if retrying is None:
            retrying = not message.failed and any(isinstance(m, Retries) for m in broker.middleware)
        if retrying:
            fields["state"] = State.RETRYING
            return State.RETRYING, EventKind.RETRYING, fields, text
        fields["state"] = State.FAILED
        kind = EventKind.TIMED_OUT if isinstance(exception, TimeLimitExceeded) else EventKind.FAILED
        return State.FAILED, kind, fields, text

    @staticmethod
    def body_done(ctx):
        """The body of a container returned: keep it In Progress until its children end."""
        return get_writer().submit(transitions.body_done(ctx)).wait()

    @staticmethod
    def submit_end(ctx, kind, fields, detail="", lazy=False):
        """Hand how the run ended to the writer; returns its change (not yet committed).
        ``lazy``: no thread will wait for it, only the message's acknowledgement."""
        fields = dict(fields)
        state = fields.pop("state")
        return get_writer().submit(transitions.end(ctx, state, kind, fields=fields, detail=detail, lazy=lazy))

    @classmethod
    def end(cls, ctx, state, kind, fields, detail=""):
        """Store how the run ended and wait until it is committed."""
        op = cls.submit_end(ctx, kind, fields, detail)
        op.wait()
        if op.applied and state in FINAL and (state == State.CANCELED or ctx.abort_requested):
            clear_flags([ctx.status_id])
        elif op.applied and state not in FINAL:
            _release(ctx)
        if op.applied and state in FINAL:
            _finished(ctx, state)
        return op.applied


def _quiet_end(ctx, state, message):
    """Whether nothing but the acknowledgement follows the commit of this run's end: a success
    or failure without a cancel to clear, on a consumer whose acknowledgements can wait for the
    commit, and no ``task_finished`` receiver that would act (``usertasks.signals.ACTS``: the
    built-in notifier decides from the run alone that it sends no email)."""
    if state not in (State.SUCCEEDED, State.FAILED) or ctx.abort_requested or ctx.fanout:
        return False
    consumer = vars(message).get(DEFERRING_CONSUMER)  # usertasks.redis's consumer marks its messages
    if consumer is None or not consumer.can_defer():
        return False
    return not receivers_act(ctx.parent_id, state, (ctx.options or {}).get("notify"))


def _release(ctx):
    """A run ended without a final state (a retry is due, or it was requeued): forget its claim,
    so that a cancel before the next run cancels the task at once."""
    try:
        get_backend().release(ctx.status_id)
    except Exception as exc:
        # Harmless: a cancel then takes the "running" path and the next run is skipped.
        logger.info("usertasks: could not release the claim of task %s: %s", ctx.status_id, exc)


def _time_limit(broker, message):
    """The time limit (ms) that applied to ``message``: its own, its actor's or TimeLimit's."""
    from dramatiq.middleware import TimeLimit

    limit = message.options.get("time_limit")
    if not limit:
        try:
            limit = broker.get_actor(message.actor_name).options.get("time_limit")
        except Exception:
            limit = None
    if not limit:
        limit = next((m.time_limit for m in broker.middleware if isinstance(m, TimeLimit)), None)
    return limit


def _requeue_abandoned(worker):
    """At worker shutdown, tasks still running after the shutdown timeout are abandoned (their
    threads die with the process).  Show them as requeued (back to Pending, guarded by the
    run's worker token) and hand their messages back to the broker now (through their consumer
    thread's ``requeue_messages``, as Dramatiq requeues the messages it had not started) rather
    than after the broker's heartbeat timeout."""
    from usertasks.models import EventKind

    writer = get_writer()
    abandoned = [c for c in writer.running() if c.tracked]
    ops = []
    for ctx in abandoned:
        writer.unregister(ctx)
        text = "The worker stopped before the task finished; it will run again."
        ops.append(writer.submit(transitions.end(ctx, State.PENDING, EventKind.REQUEUED, detail=text)))
    for op in ops:
        try:
            op.wait(30)
        except TimeoutError:
            logger.error("usertasks: could not store the requeue of %s before shutdown", op.ctx.status_id)
    consumers = getattr(worker, "consumers", None) or {}
    for ctx in abandoned:
        message = ctx.broker_message
        thread = consumers.get(message.queue_name) if message is not None else None
        if thread is None or thread.consumer is None:
            continue
        try:
            thread.requeue_messages([message])  # RabbitMQ requeues on disconnect: a no-op there
        except Exception as exc:
            logger.warning(
                "usertasks: could not requeue message %s now (%s); the broker will redeliver "
                "it after its heartbeat timeout",
                message.message_id,
                exc,
            )
    if abandoned:
        logger.warning("usertasks: worker stopped with %d task(s) still running; requeued", len(abandoned))


def _timed_out_text(limit_ms):
    if not limit_ms:
        return "The task timed out."
    seconds = limit_ms / 1000
    if seconds < 120:
        return f"The task timed out after {seconds:g} second{'' if seconds == 1 else 's'}."
    return f"The task timed out after {seconds / 60:.3g} minutes."


class _LazyStatus(SimpleLazyObject):
    """The status row of a finished run, loaded on first use of anything but what the run
    already knows (``pk``, ``parent_id``): receivers that can decide from those and the
    signal's hints (the built-in notifier, when the task does not email) cost no query."""

    def __init__(self, ctx):
        from usertasks.models import UserTaskStatus

        super().__init__(lambda: UserTaskStatus.objects.get(pk=ctx.status_id))
        self.__dict__["_hints"] = {"pk": ctx.status_id, "parent_id": ctx.parent_id}

    def __getattr__(self, name):
        hints = self.__dict__["_hints"]
        if name in hints:
            return hints[name]
        return super().__getattr__(name)


def _finished(ctx, state):
    if task_finished.receivers:
        emit_task_finished(_LazyStatus(ctx), state, notify=(ctx.options or {}).get("notify"))
