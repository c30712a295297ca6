"""With Dramatiq's own RedisBroker (no fast path, system check usertasks.W003) everything still
works through the middleware hooks alone: the worker processes here run Dramatiq's broker and
consumer, unchanged."""

import pytest

from usertasks.models import EventKind
from usertasks.states import State

from .. import tasks, tasks_cancel, tasks_fanout
from ..helpers import wait_final, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

PLAIN = {"USERTASKS_TEST_BROKER": "dramatiq-redis"}


def test_runs_end_and_are_acknowledged(start_worker, user, redis):
    start_worker(threads=4, extra_env=PLAIN)
    ok = tasks.count.send_for(user, 5, label="plain")
    bad = tasks.fail.send_for(user, label="plain")
    many = tasks.noop.send_many_for(user, [{"label": f"p{i}"} for i in range(20)])
    for status in [ok, bad, *many]:
        wait_final(status)
    assert (ok.state, ok.completed_steps) == (State.SUCCEEDED, 5)
    assert bad.state == State.FAILED and bad.error
    assert all(s.state == State.SUCCEEDED for s in many)
    # Every message acknowledged (the failure dead-lettered): nothing left for a worker.
    wait_for(lambda: redis.hlen("dramatiq:default.msgs") == 0, message="the queue's messages acknowledged")


def test_a_cancel_reaches_a_running_task(start_worker, user, redis):
    start_worker(threads=2, extra_env=PLAIN)
    status = tasks_cancel.wait_steps.send_for(user, label="plain-cancel")
    wait_for(lambda: status.refresh_from_db() or status.completed_steps > 0, message="the task to step")
    assert status.cancel(by=user)
    wait_final(status)
    assert status.state == State.CANCELED
    assert EventKind.CANCEL_REQUESTED in status.events.values_list("kind", flat=True)


def test_a_fan_out_ends_with_its_last_child(start_worker, user, redis):
    start_worker(threads=4, extra_env=PLAIN)
    parent = tasks_fanout.fan_parent.send_for(user, n=12)
    wait_final(parent, timeout=60)
    assert parent.state == State.SUCCEEDED
    assert (parent.children_total, parent.children_succeeded) == (12, 12)
