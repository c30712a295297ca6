"""Pipelines on real worker processes: order, failure midway, cancel."""

import pytest

from usertasks import pipeline
from usertasks.models import EventKind, UserTaskStatus
from usertasks.states import ACTIVE_STATES, State

from .. import tasks_fanout as t
from ..helpers import wait_final, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def ran(redis):
    return [x.decode() for x in redis.lrange("side-effect:stages", 0, -1)]


def test_stages_run_in_order_as_one_task(start_worker, user, redis):
    start_worker(processes=2, threads=4)
    status = pipeline(user, [t.stage.message("a"), t.stage.message("b", delay=0.3), t.stage.message("c")])
    assert status.is_container and status.is_pipeline
    assert status.name == "Stage a \u2192 Stage b \u2192 Stage c"
    assert [s.state for s in status.stages()] == [State.PENDING] * 3
    wait_final(status, timeout=60)
    assert status.state == State.SUCCEEDED
    assert ran(redis) == ["a", "b", "c"]
    assert (status.children_total, status.children_succeeded) == (3, 3)
    # One step per stage, and stage b's 20 steps in place of its one.
    assert (status.completed_steps, status.total_steps) == (22, 22)
    assert [s.state for s in status.stages()] == [State.SUCCEEDED] * 3
    assert list(UserTaskStatus.objects.for_user(user)) == [status]


def test_failure_midway_skips_the_rest(start_worker, user, redis):
    start_worker(processes=2, threads=4)
    status = pipeline(
        user, [t.stage.message("a"), t.stage_fail.message("b"), t.stage.message("c"), t.stage.message("d")],
        name="Publish",
    )
    wait_final(status, timeout=60)
    assert status.state == State.FAILED
    assert status.error == "A stage failed: Failing stage b: stage b broke"
    assert ran(redis) == ["a", "b"]
    assert [s.state for s in status.stages()] == [State.SUCCEEDED, State.FAILED, State.CANCELED, State.CANCELED]
    assert (status.children_succeeded, status.children_failed, status.children_skipped) == (1, 1, 2)
    assert status.message == "1 of 4 stages succeeded, 1 failed, 2 skipped"
    for skipped in status.stages()[2:]:
        assert list(skipped.events.values_list("kind", flat=True)) == [EventKind.SKIPPED]
        assert skipped.finished is not None
    assert not status.children.filter(state__in=ACTIVE_STATES).exists()


def test_cancel_stops_the_running_stage_and_skips_the_rest(start_worker, user, redis):
    start_worker(processes=2, threads=4)
    status = pipeline(user, [t.stage.message("a", delay=20), t.stage.message("b"), t.stage.message("c")])
    first = status.stages()[0]
    wait_for(lambda: UserTaskStatus.objects.get(pk=first.pk).state == State.IN_PROGRESS, timeout=30, message="stage a")
    assert status.cancel(by=user)
    wait_final(status, timeout=60)
    assert status.state == State.CANCELED
    assert [s.state for s in status.stages()] == [State.CANCELED] * 3
    assert (status.children_canceled, status.children_skipped) == (1, 2)
    assert ran(redis) == []


def test_rolled_back_pipeline_sends_nothing(user, redis, transactional_db):
    from django.db import transaction

    with pytest.raises(RuntimeError):
        with transaction.atomic():
            pipeline(user, [t.stage.message("a")])
            raise RuntimeError("rollback")
    assert not UserTaskStatus.objects.exists()


def test_stages_must_be_user_task_messages(user):
    with pytest.raises(TypeError, match="user task"):
        pipeline(user, [t.fan_done.message("x")])
    with pytest.raises(TypeError, match="messages"):
        pipeline(user, [t.stage])
    with pytest.raises(ValueError):
        pipeline(user, [])


def test_canceling_a_waiting_stage_stops_the_pipeline(start_worker, user, redis):
    status = pipeline(user, [t.stage.message("a"), t.stage.message("b"), t.stage.message("c")])
    first = status.stages()[0]
    assert first.cancel(by=user)  # canceled before any worker took it
    status.refresh_from_db()
    assert status.state == State.CANCELED
    assert [s.state for s in status.stages()] == [State.CANCELED] * 3
    assert (status.children_canceled, status.children_skipped) == (1, 2)


def test_a_stage_that_fans_out_ends_with_its_children(start_worker, user, redis):
    start_worker(processes=2, threads=4)
    status = pipeline(user, [t.fanout_stage.message("f", 30), t.stage.message("after")])
    wait_final(status, timeout=60)
    assert status.state == State.SUCCEEDED
    assert ran(redis) == ["f", "after"]
    fan = status.stages()[0]
    assert (fan.is_container, fan.children_total, fan.children_succeeded) == (True, 30, 30)
    assert int(redis.get("side-effect:fanchild:f")) == 30
