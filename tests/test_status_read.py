"""``task.status`` inside a run: one read of the row, shown as this run's start leaves it, without
waiting for the writer to store that start (it holds starts until its next progress tick)."""

import pytest

from tests import tasks_core
from tests.helpers import wait_final
from tests.tasks_web import make_task
from usertasks import transitions
from usertasks.context import TaskContext
from usertasks.states import State


@pytest.mark.django_db(transaction=True)
def test_reading_the_status_does_not_wait_for_the_progress_tick(start_worker, user, redis):
    # A tick every 30 s: a body that waited for its start to be stored would take that long.
    # (The first run after an idle spell may meet a tick at once; the next ones would not.)
    start_worker(extra_env={"USERTASKS_TEST_PROGRESS_INTERVAL": "30"})
    for i in range(3):
        status = tasks_core.reads_status.send_for(user, label=f"fast{i}")
        wait_final(status, timeout=15)
        assert status.state == State.SUCCEEDED and status.attempts == 1
        assert (status.finished - status.started).total_seconds() < 1
        assert redis.get(f"side-effect:status:fast{i}").decode() == f"{status.pk}|{status.name}|{State.IN_PROGRESS}|1"


@pytest.mark.django_db
def test_a_status_read_before_the_start_is_stored_shows_the_start(user, django_assert_num_queries):
    row = make_task(user, "T", "Retrying", attempts=1)
    ctx = TaskContext(status_id=row.pk, message_id=row.task_id, actor_name="x", attempt=2)
    ctx.start_op = transitions.start(ctx)  # held by the writer: not stored yet
    with django_assert_num_queries(1):
        status = ctx.status
    assert (status.state, status.attempts, status.worker, status.started) == (
        State.IN_PROGRESS,
        2,
        ctx.worker,
        ctx.start_op.at,
    )
    with django_assert_num_queries(0):
        assert ctx.status is status

    final = make_task(user, "Done", "Canceled")
    ctx = TaskContext(status_id=final.pk, message_id=final.task_id, actor_name="x")
    ctx.start_op = transitions.start(ctx)
    assert ctx.status.state == State.CANCELED  # the start will be refused: shown as it is


@pytest.mark.django_db
def test_a_start_stored_before_the_read_is_not_counted_twice(user):
    """The writer may commit the start between the run's look at it and its read of the row:
    the row then carries the run's token and is shown as read."""
    row = make_task(user, "T", "Pending")
    ctx = TaskContext(status_id=row.pk, message_id=row.task_id, actor_name="x", attempt=1)
    ctx.start_op = transitions.start(ctx)
    transitions.apply([ctx.start_op])  # committed, but ``done`` is the writer's to set
    status = ctx.status
    assert (status.state, status.attempts, status.worker) == (State.IN_PROGRESS, 1, ctx.worker)
