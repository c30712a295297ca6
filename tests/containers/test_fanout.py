"""Fan-out on real worker processes: counters, exactly-once end and callback, policies, cancel."""

import pytest

from usertasks.models import EventKind, UserTaskEvent, UserTaskStatus
from usertasks.states import ACTIVE_STATES, State

from .. import tasks_fanout as t
from ..helpers import wait_final, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def counters(status):
    return (
        status.children_total, status.children_succeeded, status.children_failed,
        status.children_canceled, status.children_skipped,
    )


def callbacks(redis, label, status):
    """How many completion callbacks of ``status`` ran, once no other one can come.

    A callback is sent right after the commit that ends the container, before the message of its
    last child is acknowledged, and the reaper resends only a callback still marked due.  So once
    every message of the queue is acknowledged (the callbacks run too) and the mark is gone, the
    count is final: a second callback would be counted by now."""
    key = f"side-effect:fancallback:{label}"
    # Queued behind the canceled children's messages, which the workers skip first.
    wait_for(lambda: redis.get(key), timeout=60, message="the completion callback")

    def settled():
        status.refresh_from_db()
        due = (status.options.get("fanout") or {}).get("callback_due")
        return not redis.hlen("dramatiq:default.msgs") and not redis.hlen("dramatiq:default.DQ.msgs") and not due

    wait_for(settled, timeout=60, message="every message acknowledged and the callback no longer due")
    return int(redis.get(key) or 0)


def test_two_thousand_children_exact_counters_and_one_callback(start_worker, user, redis):
    start_worker(processes=2, threads=4)
    status = t.fan_parent.send_for(user, 2000, label="big")
    wait_final(status, timeout=240)
    assert status.state == State.SUCCEEDED, status.error
    assert status.is_container
    assert counters(status) == (2000, 2000, 0, 0, 0)
    assert (status.completed_steps, status.total_steps) == (2000, 2000)
    assert status.percent == 100.0
    assert status.message == "2,000 of 2,000 subtasks succeeded"
    assert status.unique_key is None and status.finished
    children = UserTaskStatus.objects.filter(parent=status)
    assert children.count() == 2000
    assert children.filter(state=State.SUCCEEDED).count() == 2000
    assert int(redis.get("side-effect:fanchild:big")) == 2000
    assert callbacks(redis, "big", status) == 1
    status.refresh_from_db()
    assert "callback_due" not in status.options["fanout"]  # sent, so the reaper leaves it alone
    # One final event on the container; the dashboard shows the container only.
    assert status.events.filter(kind=EventKind.SUCCEEDED).count() == 1
    assert list(UserTaskStatus.objects.for_user(user)) == [status]
    assert all(c.get("notify") is False and c.get("child") for c in children.values_list("options", flat=True)[:50])
    # A child's ordinary start and success are in its row, not in events (FANOUT_CHILD_EVENTS).
    assert not UserTaskEvent.objects.filter(status__parent=status).exists()
    assert not children.filter(started__isnull=True).exists() and not children.filter(finished__isnull=True).exists()


def child_events(status):
    return sorted(UserTaskEvent.objects.filter(status__parent=status).values_list("status__name", "kind"))


def test_allow_failures_succeeds_and_lists_the_failures(start_worker, user, redis):
    start_worker(processes=2, threads=4)
    status = t.fan_parent.send_for(user, 40, label="af", fail_at=[3, 17, 31])
    wait_final(status, timeout=60)
    assert status.state == State.SUCCEEDED
    assert counters(status) == (40, 37, 3, 0, 0)
    assert status.message == "37 of 40 subtasks succeeded, 3 failed"
    failed = list(status.failed_children())
    assert sorted(c.name for c in failed) == ["Child 17", "Child 3", "Child 31"]
    assert all(c.error.startswith("child ") and c.error.endswith(" refused") for c in failed)
    assert callbacks(redis, "af", status) == 1
    # What went wrong stays in the children's histories.
    assert child_events(status) == [(f"Child {i}", EventKind.FAILED) for i in (17, 3, 31)]


def test_children_record_every_event_with_the_setting(start_worker, user, redis):
    start_worker(processes=1, threads=4, extra_env={"USERTASKS_TEST_FANOUT_CHILD_EVENTS": "1"})
    status = t.fan_parent.send_for(user, 6, label="loud", fail_at=[2])
    wait_final(status, timeout=60)
    assert counters(status) == (6, 5, 1, 0, 0)
    expected = [(f"Child {i}", kind) for i in range(6)
                for kind in (EventKind.FAILED if i == 2 else EventKind.SUCCEEDED, EventKind.STARTED)]
    assert child_events(status) == sorted(expected)


def test_fail_fast_cancels_the_rest(start_worker, user, redis):
    start_worker(processes=2, threads=4)
    status = t.fan_parent.send_for(user, 300, label="ff", policy="fail_fast", fail_at=[4], delay=0.05)
    wait_final(status, timeout=90)
    assert status.state == State.FAILED
    assert status.error.startswith("A subtask failed: Child 4: child 4 refused")
    total, ok, failed, canceled, skipped = counters(status)
    assert total == 300 and failed == 1 and skipped == 0
    assert canceled > 0 and ok + failed + canceled == 300
    children = UserTaskStatus.objects.filter(parent=status)
    assert not children.filter(state__in=ACTIVE_STATES).exists()
    assert children.filter(state=State.CANCELED).count() == canceled
    assert int(redis.get("side-effect:fanchild:ff") or 0) == ok
    assert callbacks(redis, "ff", status) == 1


def test_children_done_before_the_body_returns(start_worker, user, redis):
    start_worker(processes=2, threads=4)
    status = t.fan_parent.send_for(user, 5, label="early", linger=2.0)
    wait_for(lambda: int(redis.get("side-effect:fanchild:early") or 0) == 5, timeout=30, message="children")
    status.refresh_from_db()
    assert status.state == State.IN_PROGRESS  # the body still runs
    wait_final(status, timeout=30)
    assert status.state == State.SUCCEEDED
    assert counters(status) == (5, 5, 0, 0, 0)
    assert callbacks(redis, "early", status) == 1


def test_retried_children_are_counted(start_worker, user, redis):
    start_worker(processes=2, threads=4)
    status = t.fan_parent.send_for(user, 20, label="retry", child="flaky")
    wait_final(status, timeout=60)
    assert status.state == State.SUCCEEDED
    assert counters(status) == (20, 20, 0, 0, 0)
    assert status.children_retried == 20
    assert child_events(status) == sorted((f"Flaky child {i}", EventKind.RETRYING) for i in range(20))


def test_cancel_of_a_fan_out_cancels_pending_and_running_children(start_worker, user, redis):
    start_worker(processes=2, threads=4)
    status = t.fan_parent.send_for(user, 200, label="cx", delay=1.0)
    wait_for(
        lambda: UserTaskStatus.objects.filter(parent=status, state=State.IN_PROGRESS).count() >= 4,
        timeout=60, message="children running",
    )
    assert status.cancel(by=user) is True
    wait_final(status, timeout=60)
    assert status.state == State.CANCELED
    total, ok, failed, canceled, skipped = counters(status)
    assert total == 200 and failed == 0 and canceled >= 190 and ok + canceled == 200
    children = UserTaskStatus.objects.filter(parent=status)
    assert not children.filter(state__in=ACTIVE_STATES).exists()
    assert int(redis.get("side-effect:fanchild:cx") or 0) == ok
    assert callbacks(redis, "cx", status) == 1


def test_fan_out_needs_a_user_task_and_a_known_policy(user):
    from usertasks.context import TaskContext

    ctx = TaskContext(status_id=None, message_id="m", actor_name="x")
    with pytest.raises(Exception, match="tracked"):
        ctx.fan_out(t.fan_child, [(1,)])
    ctx.status_id = 1
    with pytest.raises(ValueError, match="policy"):
        ctx.fan_out(t.fan_child, [(1,)], policy="sometimes")
    with pytest.raises(TypeError, match="user_task"):
        ctx.fan_out(t.fan_done, [(1,)])
