"""Helpers for running user tasks in your own test suite.

Use Dramatiq's in-memory ``StubBroker`` in your test settings, start tasks the way your code
does (``send_for``), then call :func:`run_user_tasks` to run everything that was queued with an
in-process Dramatiq worker, and inspect the rows::

    # settings for the tests
    DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.stub.StubBroker",
        "OPTIONS": {},
        "MIDDLEWARE": ["dramatiq.middleware.Retries", "django_dramatiq.middleware.DbConnectionsMiddleware"],
    }

    # a test (pytest-django)
    from usertasks.testing import last_status, run_user_tasks

    @pytest.mark.django_db(transaction=True)
    def test_export(client, user):
        client.post("/courses/42/export/")
        run_user_tasks()
        status = last_status(export_course)
        assert status.state == "Succeeded"

The worker runs the tasks in other threads, which use their own database connections: the
rows must be committed to be visible to them, so use ``transaction=True`` (pytest-django) or
``TransactionTestCase``, not a test wrapped in a transaction.  See ``docs/testing.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from .models import UserTaskStatus

import threading
import time

import dramatiq
from dramatiq.middleware import Middleware

__all__ = ["last_status", "run_user_tasks", "statuses"]


class _RunMonitor(Middleware):
    """Counts processed messages and closes the worker threads' database connections."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processed = 0

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None, exception: Any = None) -> None:
        with self.lock:
            self.processed += 1

    def after_skip_message(self, broker: Any, message: Any) -> None:
        with self.lock:
            self.processed += 1

    def before_worker_thread_shutdown(self, broker: Any, thread: Any) -> None:
        from django.db import connections

        connections.close_all()


def _pending(broker: Any) -> int:
    """Messages still waiting on any queue (delay queues included) of a StubBroker."""
    return sum(q.unfinished_tasks for q in list(broker.queues.values()))


def run_user_tasks(broker: Any = None, *, timeout: float = 30, worker_threads: int = 1, fail_fast: bool = False) -> int:
    """Run every message queued on ``broker`` (default: the global broker, which must be a
    :class:`dramatiq.brokers.stub.StubBroker`) until all its queues are empty, including the
    messages those tasks enqueue (retries, fan-out children, follow-up tasks).

    Starts an in-process :class:`dramatiq.Worker` with ``worker_threads`` threads, stops it
    when everything is done, and waits until every status change has been written.  Returns
    the number of messages processed.

    ``timeout`` (seconds) bounds the whole run; when it expires, :class:`TimeoutError` is
    raised (tasks still running are requeued, as on a worker shutdown).  With
    ``fail_fast=True`` the exception of the first message that failed for good is re-raised
    here; by default a failure is only recorded on the task's row (``state == "Failed"``).

    Retries keep the actor's backoff (Dramatiq's default starts at 15 s): give actors used in
    tests ``max_retries=0`` or a small ``min_backoff``.
    """
    from dramatiq.brokers.stub import StubBroker

    from .middleware import install
    from .writer import stop_writer

    broker = broker or dramatiq.get_broker()
    if not isinstance(broker, StubBroker):
        raise TypeError(
            f"run_user_tasks() needs a StubBroker, not {type(broker).__name__}: set "
            "DRAMATIQ_BROKER['BROKER'] = 'dramatiq.brokers.stub.StubBroker' in your test settings."
        )
    install(broker)
    monitor = _RunMonitor()
    broker.add_middleware(monitor)
    deadline = time.monotonic() + timeout
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=worker_threads)
    worker.start()
    try:
        while True:
            for name in [n for n in list(broker.queues) if not n.endswith(".DQ")]:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"run_user_tasks(): tasks still queued after {timeout}s")
                try:
                    broker.join(name, timeout=int(left * 1000), fail_fast=fail_fast)
                except dramatiq.QueueJoinTimeout:
                    raise TimeoutError(f"run_user_tasks(): tasks still queued after {timeout}s") from None
            worker.join()
            if not _pending(broker):
                break
    finally:
        worker.stop(timeout=5000)
        broker.middleware.remove(monitor)
        stop_writer()  # flush every status change; the next task starts a fresh writer
    return monitor.processed


def statuses(actor: Any = None, user: Any = None) -> QuerySet[UserTaskStatus]:
    """Status rows, oldest first; only those of ``actor`` (an actor or its name) and of
    ``user`` when given."""
    from .models import UserTaskStatus

    rows = UserTaskStatus.objects.all()
    if actor is not None:
        rows = rows.filter(task_class=getattr(actor, "actor_name", actor))
    if user is not None:
        rows = rows.filter(user=user)
    return rows.order_by("created", "id")


def last_status(actor: Any = None, user: Any = None) -> UserTaskStatus | None:
    """The most recently created status row (of ``actor`` and ``user`` when given), fresh from
    the database, or ``None``."""
    return statuses(actor, user).last()
