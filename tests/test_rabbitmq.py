"""A RabbitMQ broker with the database abort backend, against the local RabbitMQ (skipped when
none answers on 127.0.0.1:5672)."""

import os
import socket

import pytest
from django.test import override_settings

from usertasks.abort import backend_path
from usertasks.models import EventKind
from usertasks.states import State

from . import tasks_cancel as t
from .helpers import wait_final, wait_for

URL = os.environ.get("USERTASKS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
ENV = {"USERTASKS_TEST_BROKER": "rabbitmq", "USERTASKS_TEST_RABBITMQ_URL": URL}
SETTINGS = {"BASE_URL": "http://testserver", "PROGRESS_INTERVAL": 0.1, "ABORT_BACKEND": "database"}


def rabbit_answers():
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not rabbit_answers(), reason="no RabbitMQ on 127.0.0.1:5672"),
]


def effect(redis, key):
    return int(redis.get(f"side-effect:{key}") or 0)


@pytest.fixture
def rabbit():
    """The actor sends to RabbitMQ while the test runs (the test process's broker is Redis)."""
    pytest.importorskip("pika")
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=URL)
    try:
        broker.declare_queue(t.RABBIT_QUEUE)
        broker.flush_all()
    except Exception as exc:  # pragma: no cover - refused credentials, ...
        pytest.skip(f"RabbitMQ unusable: {exc}")
    saved = t.rabbit_steps.broker
    t.rabbit_steps.broker = broker
    with override_settings(USERTASKS=SETTINGS):
        yield broker
    t.rabbit_steps.broker = saved
    broker.flush_all()
    broker.close()


def test_backend_choice_follows_the_broker(rabbit):
    assert backend_path() == "usertasks.abort.database.DatabaseAbortBackend"


def test_runs_and_cancels_running_task(rabbit, start_worker, user, redis):
    start_worker(extra_env=ENV)
    done = t.rabbit_steps.send_for(user, label="ok", n=20)
    wait_final(done, timeout=60)
    assert done.state == State.SUCCEEDED and done.completed_steps == 20

    status = t.rabbit_steps.send_for(user, label="rc", n=3000)
    wait_for(lambda: status.refresh() and status.state == State.IN_PROGRESS and status.completed_steps,
             timeout=60, message="running")
    assert status.cancel(by=user) is True
    wait_final(status, timeout=30)
    assert status.state == State.CANCELED
    assert effect(redis, "done:rc") == 0
    assert status.events.filter(kind=EventKind.CANCEL_REQUESTED).count() == 1


def test_canceled_pending_task_is_skipped(rabbit, start_worker, user, redis):
    status = t.rabbit_steps.send_for(user, label="rp", n=10)
    assert status.cancel(by=user) is True
    after = t.rabbit_steps.send_for(user, label="after", n=1)
    start_worker(extra_env=ENV)
    wait_final(after, timeout=60)  # sent later: the canceled message was taken first
    wait_for(lambda: rabbit.get_queue_message_counts(t.RABBIT_QUEUE)[0] == 0, timeout=60, interval=0.5,
             message="message consumed")
    status.refresh_from_db()
    assert status.state == State.CANCELED and status.attempts == 0
    assert effect(redis, "started:rp") == 0
