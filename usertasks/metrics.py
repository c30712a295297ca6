"""Prometheus metrics of usertasks (``pip install usertasks[metrics]``: ``prometheus_client``).

* Recorded by the workers (:class:`usertasks.middleware.UserTaskMetrics`), once per run:
  ``usertasks_tasks_finished_total{actor_name,state}`` (a run that ended in a final state),
  ``usertasks_task_duration_seconds{actor_name}`` (how long a run's body took) and
  ``usertasks_task_wait_seconds{actor_name}`` (from when its message was due, enqueued or its
  delay over, to its start).
* Read from the database at scrape time: ``usertasks_tasks{state}``, the number of tasks in each
  state (one ``GROUP BY`` query), by :class:`TasksByStateCollector`, which the ``metrics`` view
  serves.

``prometheus_client`` is imported on first use, never when this module is imported: in multiprocess
mode it must be imported after ``PROMETHEUS_MULTIPROC_DIR`` is set (Dramatiq's ``Prometheus``
middleware sets it when a worker process boots), or its values stay in one process's memory.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from .exceptions import ConfigurationError
from .states import State

__all__ = [
    "DURATION_BUCKETS",
    "WAIT_BUCKETS",
    "TaskMetrics",
    "TasksByStateCollector",
    "prometheus",
    "task_metrics",
]

#: Buckets (seconds) of ``usertasks_task_duration_seconds``: user tasks run from a second to hours.
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, float("inf"))
#: Buckets (seconds) of ``usertasks_task_wait_seconds``.
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))

logger = logging.getLogger("usertasks.metrics")

_lock = threading.Lock()
_metrics: dict[int, TaskMetrics] = {}  # id(registry) -> metrics


def prometheus() -> Any:
    """The ``prometheus_client`` module, or a clear error when it is not installed."""
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigurationError("usertasks' metrics need prometheus_client: pip install 'usertasks[metrics]'") from exc
    return prometheus_client


class TaskMetrics:
    """The three metrics the workers record, registered in one registry."""

    def __init__(self, registry: Any) -> None:
        prom = prometheus()
        self.finished = prom.Counter(
            "usertasks_tasks_finished_total",
            "Runs of user tasks that ended in a final state, by actor and state.",
            ["actor_name", "state"],
            registry=registry,
        )
        self.duration = prom.Histogram(
            "usertasks_task_duration_seconds",
            "Seconds the body of a run of a user task took.",
            ["actor_name"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.wait = prom.Histogram(
            "usertasks_task_wait_seconds",
            "Seconds from when a user task's message was due (enqueued, or its delay over) to its start.",
            ["actor_name"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )


def task_metrics(registry: Any = None) -> TaskMetrics:
    """The workers' metrics in ``registry`` (default: ``prometheus_client.REGISTRY``), made once.

    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set, as Dramatiq's ``Prometheus``
    middleware does) their values go to that directory's files, one set per process, where the
    exposition server of Dramatiq (or any ``MultiProcessCollector``) reads them."""
    if registry is None:
        registry = prometheus().REGISTRY
    metrics = _metrics.get(id(registry))
    if metrics is None:
        with _lock:
            metrics = _metrics.get(id(registry))
            if metrics is None:
                _check_multiprocess()
                metrics = _metrics[id(registry)] = TaskMetrics(registry)
    return metrics


def _check_multiprocess() -> None:
    """Say so when ``PROMETHEUS_MULTIPROC_DIR`` is set but prometheus_client was imported before
    it was: its values then stay in this process, and no exposition server sees them."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import values

    if getattr(values.ValueClass, "__name__", "") == "MutexValue":
        logger.warning(
            "usertasks: PROMETHEUS_MULTIPROC_DIR is set, but prometheus_client was imported before it "
            "was; the metrics of this process stay in its memory (import prometheus_client only after "
            "the worker process boots)"
        )


class TasksByStateCollector:
    """``usertasks_tasks{state}``: tasks in each state, from the database at scrape time (one
    ``GROUP BY`` query).  Every state of :class:`usertasks.states.State` is reported, 0 when no
    task is in it.  ``using``: the database alias (default: where the status rows are written)."""

    def __init__(self, using: str | None = None) -> None:
        self.using = using

    def counts(self) -> dict[str, int]:
        from django.db import router
        from django.db.models import Count

        from .models import UserTaskStatus

        db = self.using or router.db_for_write(UserTaskStatus)
        counts = {str(state): 0 for state in State}
        rows = UserTaskStatus.objects.using(db).order_by().values_list("state").annotate(n=Count("pk"))
        counts.update(dict(rows))
        return counts

    def collect(self) -> Any:
        family = _gauge_family()(
            "usertasks_tasks", "User tasks in each state, read from the database.", labels=["state"]
        )
        for state, n in self.counts().items():
            family.add_metric([state], n)
        yield family

    def describe(self) -> list[Any]:
        # No query when the collector is registered.
        return [_gauge_family()("usertasks_tasks", "User tasks in each state.", labels=["state"])]


def _gauge_family() -> Any:
    prometheus()  # (a clear error when it is not installed)
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily
