"""Cancel of Celery user tasks: pending ones never run their body, running ones stop at their next
progress call; through the compat API and through usertasks' own ``cancel()`` alike."""

import pytest

from user_tasks import user_task_stopped
from user_tasks.models import UserTaskStatus
from usertasks.models import EventKind
from usertasks.models import UserTaskStatus as CoreStatus

from ..helpers import wait_for
from . import celerytasks
from .helpers import side_effects, wait_state

pytestmark = pytest.mark.django_db(transaction=True)

FINAL = ("Succeeded", "Failed", "Canceled")


@pytest.fixture
def stopped():
    received = []

    def receiver(sender, status, **kwargs):
        received.append((status.task_id, status.state))

    user_task_stopped.connect(receiver)
    yield received
    user_task_stopped.disconnect(receiver)


def test_cancel_pending_never_runs_the_body(celery_worker, celery_app, user, other_user, redis, stopped):
    # Sent to a queue the worker does not consume yet: it is Pending for sure.
    result = celerytasks.count.apply_async((user.pk, 2), {"label": "p"}, queue="later")
    status = UserTaskStatus.objects.get(task_id=result.id)
    assert status.cancel(by=other_user) is True
    assert status.state == UserTaskStatus.CANCELED and status.canceled_by == other_user
    assert stopped == [(result.id, "Canceled")]
    celery_app.control.add_consumer("later", reply=True, timeout=5)
    try:
        wait_for(lambda: result.state in ("REVOKED", "IGNORED"), 30, message="the worker to drop the task")
    finally:
        celery_app.control.cancel_consumer("later", reply=True, timeout=5)
    assert side_effects(redis, "p", "started") == 0
    status.refresh_from_db()
    assert status.state == UserTaskStatus.CANCELED and status.started is None
    assert EventKind.STARTED not in status.events.values_list("kind", flat=True)


def test_cancel_pending_checked_at_pickup_without_revoke(eager, user, redis):
    """A canceled task whose revoke never reached a worker is dropped by the database check."""
    row = UserTaskStatus.objects.create(user=user, name="x", task_class="compat.count", total_steps=2)
    row.cancel()
    result = celerytasks.count.apply((user.pk, 2), {"label": "nr"}, task_id=row.task_id)
    assert result.state == "IGNORED"
    assert side_effects(redis, "nr", "started") == 0
    row.refresh_from_db()
    assert row.state == UserTaskStatus.CANCELED


@pytest.mark.parametrize("via", ["compat", "usertasks"])
def test_cancel_running_stops_at_next_progress_call(celery_worker, user, redis, via):
    result = celerytasks.count.delay(user.pk, 100, label="run", delay=0.2)
    status = UserTaskStatus.objects.get(task_id=result.id)
    wait_for(lambda: side_effects(redis, "run", "started"), 60, message="the task to start")
    wait_state(status, "In Progress")
    if via == "compat":
        assert status.cancel(by=user) is True
    else:
        assert CoreStatus.objects.get(pk=status.pk).cancel(by=user) is True
    wait_state(status, FINAL)
    assert status.state == UserTaskStatus.CANCELED
    assert status.completed_steps < 100
    assert side_effects(redis, "run") == 0  # the loop never finished
    kinds = list(status.events.values_list("kind", flat=True))
    assert kinds[-2:] == [EventKind.CANCEL_REQUESTED, EventKind.CANCELED]
    # user_task_stopped was sent in the worker process (see celerytasks.record_stopped).
    key = f"side-effect:compat:stopped:{result.id}"
    assert wait_for(lambda: redis.get(key), 30, message="user_task_stopped") == b"Canceled"


def test_cancel_a_group_cancels_its_tasks(celery_app, protocol, user, transactional_db):
    from celery import group

    result = group(celerytasks.count.s(user.pk, 1), celerytasks.count.s(user.pk, 1)).apply_async(queue="nobody-listens")
    container = UserTaskStatus.objects.get(task_id=result.id)
    assert container.cancel() is True
    assert container.state == UserTaskStatus.CANCELED
    assert set(UserTaskStatus.objects.filter(parent=container).values_list("state", flat=True)) == {"Canceled"}
    assert container.cancel() is False
