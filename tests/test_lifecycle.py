import pytest

from usertasks.models import EventKind, UserTaskStatus
from usertasks.states import State

from . import tasks
from .conftest import wait_final

pytestmark = pytest.mark.django_db(transaction=True)


def test_success_path(worker, user, redis):
    status = tasks.count.send_for(user, 5, label="a")
    assert status.state == State.PENDING
    assert status.name == "Count to 5"
    wait_final(status)
    assert status.state == State.SUCCEEDED
    assert (status.completed_steps, status.total_steps) == (5, 5)
    assert status.message == "item 5 of 5"
    assert status.attempts == 1
    assert status.started and status.finished and status.started <= status.finished
    assert redis.get("side-effect:count:a") == b"1"
    kinds = list(status.events.values_list("kind", flat=True))
    assert kinds == [EventKind.ENQUEUED, EventKind.STARTED, EventKind.SUCCEEDED]
