"""Forced abort, time limits and worker death (SIGKILL, SIGTERM) with real worker processes."""

import os
import signal

import pytest

from usertasks.models import EventKind
from usertasks.states import State

from .. import tasks_cancel as t
from ..helpers import wait_final, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def effect(redis, key):
    return int(redis.get(f"side-effect:{key}") or 0)


def test_forced_abort_of_a_task_that_ignores_the_cancel(worker, user, redis):
    status = t.stuck.send_for(user, label="s")
    wait_for(lambda: effect(redis, "started:s"), message="task started")
    wait_for(lambda: status.refresh() and status.state == State.IN_PROGRESS, message="In Progress")
    assert status.cancel(by=user) is True
    wait_final(status, timeout=30)
    assert status.state == State.CANCELED
    assert effect(redis, "done:s") == 0
    event = status.events.get(kind=EventKind.CANCELED)
    assert "force" in event.detail
    assert status.attempts == 1  # never retried
    assert not redis.exists("dramatiq:default.XQ.msgs")


def test_time_limit_fails_with_a_message(worker, user, redis):
    status = t.too_slow.send_for(user, label="tl")
    wait_final(status, timeout=30)
    assert status.state == State.FAILED
    assert status.error == "The task timed out after 1 second."
    assert status.error_class == "dramatiq.middleware.time_limit.TimeLimitExceeded"
    assert status.events.filter(kind=EventKind.TIMED_OUT).count() == 1
    assert effect(redis, "done:tl") == 0


def test_sigkill_with_tasks_in_flight(start_worker, user, redis):
    first = start_worker(processes=1, threads=4)
    statuses = [t.wait_steps.send_for(user, label=f"k{i}", n=300, delay=0.01) for i in range(3)]
    for s in statuses:
        wait_for(lambda s=s: s.refresh() and s.state == State.IN_PROGRESS, message="all In Progress")
    first.kill()
    for s in statuses:
        s.refresh_from_db()
        assert s.state == State.IN_PROGRESS  # nobody could record anything
    start_worker(processes=1, threads=4)
    for s in statuses:
        wait_final(s, timeout=90)
        assert s.state == State.SUCCEEDED
        assert s.attempts == 2
        assert s.events.filter(kind=EventKind.STARTED).count() == 2
        assert (s.completed_steps, s.total_steps) == (300, 300)
    for i in range(3):
        assert effect(redis, f"done:k{i}") == 1


def test_sigterm_requeues_the_running_task(start_worker, user, redis):
    first = start_worker(processes=1, threads=2)
    status = t.wait_steps.send_for(user, label="term", n=1500, delay=0.01)
    wait_for(lambda: status.refresh() and status.state == State.IN_PROGRESS, message="In Progress")
    # SIGTERM to the main process only, as a process manager does; it forwards it to its worker
    # processes (a second SIGTERM would make Dramatiq kill them at once).  The shutdown
    # timeout (5 s) passes with the task still running.
    os.kill(first.proc.pid, signal.SIGTERM)
    first.proc.wait(60)
    status.refresh_from_db()
    assert status.state == State.PENDING
    assert status.worker == ""
    kinds = list(status.events.values_list("kind", flat=True))
    assert kinds[-1] == EventKind.REQUEUED
    assert EventKind.FAILED not in kinds
    assert redis.llen("dramatiq:default") == 1  # handed back to the broker at once
    start_worker(processes=1, threads=2)
    wait_final(status, timeout=90)
    assert status.state == State.SUCCEEDED
    assert status.attempts == 2
    assert effect(redis, "done:term") == 1


def test_forced_abort_is_not_an_exception_and_never_retried():
    from dramatiq.middleware.threading import Interrupt

    from usertasks import Aborted
    from usertasks.exceptions import ForcedAbort

    assert issubclass(ForcedAbort, Interrupt) and not issubclass(ForcedAbort, Exception)
    for actor in (t.stuck, t.wait_steps):
        assert Aborted in actor.options["throws"] and ForcedAbort in actor.options["throws"]


def test_sigkill_in_the_middle_of_group_commits(start_worker, user, redis):
    """Many short tasks flowing through the writer's batches and the deferred acknowledgements
    when the worker is killed: no final state is lost or written twice, and a task whose final
    state was committed never runs again, even if its acknowledgement was lost."""
    from django.db.models import Count, Q

    from usertasks.models import UserTaskStatus

    n = 400
    first = start_worker(processes=2, threads=4)
    rows = t.side_effect.send_many_for(user, [{"label": f"b{i}"} for i in range(n)])
    labels = {r.pk: f"b{i}" for i, r in enumerate(rows)}
    wait_for(lambda: UserTaskStatus.objects.filter(state=State.SUCCEEDED).count() >= 60, interval=0.005,
             message="some tasks done")
    first.kill()
    committed = set(UserTaskStatus.objects.filter(state=State.SUCCEEDED).values_list("pk", flat=True))
    assert 60 <= len(committed) < n, "kill the worker while tasks are still flowing"
    ran_before = {pk: effect(redis, f"ran:{labels[pk]}") for pk in labels}
    start_worker(processes=1, threads=4)  # redelivers the killed worker's messages (heartbeat 4 s)
    wait_for(lambda: UserTaskStatus.objects.filter(state=State.SUCCEEDED).count() == n, timeout=90,
             message="every task final")
    wait_for(lambda: not redis.hlen("dramatiq:default.msgs"), timeout=30, message="every message acknowledged")
    succeeded = UserTaskStatus.objects.annotate(
        ends=Count("events", filter=Q(events__kind=EventKind.SUCCEEDED))
    ).values_list("pk", "ends")
    assert {pk: ends for pk, ends in succeeded} == {pk: 1 for pk in labels}  # none lost, none twice
    for pk, label in labels.items():
        runs = effect(redis, f"ran:{label}")
        if pk in committed:
            assert runs == ran_before[pk] == 1  # final before the kill: never run again
        else:
            assert 1 <= runs <= 2  # run again if it was cut off before its commit


def test_shutdown_notifications_requeue_the_running_task(start_worker, user, redis):
    """With Dramatiq's ShutdownNotifications, a stopping worker interrupts its running tasks with
    ``Shutdown``: the task goes back to Pending (a ``requeued`` event, not a failure) and its
    retry runs on the next worker."""
    first = start_worker(processes=1, threads=2, extra_env={"USERTASKS_TEST_SHUTDOWN_NOTIFICATIONS": "1"})
    status = t.wait_steps_retrying.send_for(user, label="sn", n=1000, delay=0.01)
    wait_for(lambda: status.refresh() and status.state == State.IN_PROGRESS, message="In Progress")
    first.stop()
    assert first.proc.returncode is not None
    status.refresh_from_db()
    assert status.state == State.PENDING and status.worker == ""
    kinds = list(status.events.values_list("kind", flat=True))
    assert kinds[-1] == EventKind.REQUEUED and EventKind.FAILED not in kinds
    assert effect(redis, "done:sn") == 0
    start_worker(processes=1, threads=2)
    wait_final(status, timeout=90)
    assert status.state == State.SUCCEEDED and status.attempts == 2
    assert effect(redis, "started:sn") == 2 and effect(redis, "done:sn") == 1
