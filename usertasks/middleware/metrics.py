"""Prometheus metrics of the runs of user tasks (``usertasks.metrics``), recorded by the worker.

* ``usertasks_task_wait_seconds{actor_name}``: when a run starts, the time since its message
  was due (sent, or its delay or retry backoff over).
* ``usertasks_task_duration_seconds{actor_name}``: when a run ends, how long it ran.
* ``usertasks_tasks_finished_total{actor_name,state}``: when a run ends in a final state
  (Succeeded, Failed, Canceled).  A retried run, a requeued one and a container whose body
  returned (it ends with its children) are not finished.

The metrics are created on first use, after the worker process booted: Dramatiq's
``Prometheus`` middleware sets ``PROMETHEUS_MULTIPROC_DIR`` then, so they are written to the
same files as Dramatiq's own metrics and its exposition server serves them, summed over the
worker processes.  Without that middleware they live in ``prometheus_client.REGISTRY``.

It must sit right *after* :class:`~usertasks.middleware.UserTaskTracking` (before ``Retries``):
``after_*`` hooks run in reverse order, so it sees ``Retries``' decision and the run's context
before the tracking middleware lets go of it.  :func:`usertasks.middleware.install` puts it there
when ``prometheus_client`` is installed.
"""

import logging
import time

from dramatiq.middleware import Middleware

from ..context import _current
from ..metrics import task_metrics
from ..states import FINAL_STATES, State
from .tracking import UserTaskTracking

logger = logging.getLogger("usertasks.metrics")

__all__ = ["UserTaskMetrics"]

#: Attribute of the message proxy holding the run's start (``time.monotonic()``).
STARTED = "_usertasks_metrics_started"


class UserTaskMetrics(Middleware):
    """Records the wait, the duration and the outcome of every run of a user task."""

    def __init__(self, *, registry=None):
        self.registry = registry  # None: prometheus_client.REGISTRY

    def before_process_message(self, broker, message):
        ctx = _current.get()
        if ctx is None or not ctx.tracked or ctx.message_id != message.message_id:
            return
        setattr(message, STARTED, time.monotonic())
        try:
            options = message.options
            due = max(message.message_timestamp, options.get("eta") or 0) / 1000
            task_metrics(self.registry).wait.labels(ctx.actor_name).observe(max(0.0, time.time() - due))
        except Exception:
            logger.exception("usertasks: could not record the wait of task %s", ctx.status_id)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        ctx = _current.get()
        if ctx is None or not ctx.tracked or ctx.message_id != message.message_id:
            return
        started = vars(message).get(STARTED)
        try:
            metrics = task_metrics(self.registry)
            if started is not None:
                metrics.duration.labels(ctx.actor_name).observe(time.monotonic() - started)
            state = self.final_state(broker, message, ctx, exception)
            if state is not None:
                metrics.finished.labels(ctx.actor_name, state).inc()
        except Exception:
            logger.exception("usertasks: could not record the end of task %s", ctx.status_id)

    @staticmethod
    def final_state(broker, message, ctx, exception):
        """The final state this run ends in, or ``None`` when the task goes on (a retry, a
        requeue, a container waiting for its children): the tracking middleware's decision."""
        if ctx.ended:
            return None  # a retry was sent: UserTaskTracking stored Retrying before it
        state = UserTaskTracking.outcome(broker, message, ctx, exception)[0]
        if state not in FINAL_STATES or (state == State.SUCCEEDED and ctx.fanout):
            return None
        return str(state)
