"""usertasks.testing: run queued user tasks on a StubBroker in-process, inspect their rows."""

import time

import dramatiq
import dramatiq.broker
import pytest
from django.db import transaction
from dramatiq.brokers.stub import StubBroker

from usertasks import user_task
from usertasks.middleware import install as install_middleware
from usertasks.models import EventKind
from usertasks.states import State
from usertasks.testing import last_status, run_user_tasks, statuses

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def stub():
    """A StubBroker as the global broker for one test, with actors declared on it."""
    saved = dramatiq.broker.global_broker
    broker = StubBroker()
    install_middleware(broker)
    dramatiq.set_broker(broker)

    @user_task(broker=broker, actor_name="helper_count", name="Count {n}", max_retries=0)
    def count(task, n):
        task.set_total_steps(n)
        for i in range(n):
            task.step(message=f"{i + 1}")

    @user_task(broker=broker, actor_name="helper_fail", name="Fail", max_retries=0)
    def fail(task):
        raise ValueError("no luck")

    calls = []

    @user_task(broker=broker, actor_name="helper_flaky", name="Flaky", max_retries=3, min_backoff=10, max_backoff=20)
    def flaky(task):
        calls.append(task.attempt)
        if len(calls) < 3:
            raise RuntimeError(f"try {len(calls)}")

    @user_task(broker=broker, actor_name="helper_chain", name="Chain {depth}", max_retries=0)
    def chain(task, depth):
        if depth:
            chain.send_for(task.status.user, depth - 1)

    @user_task(broker=broker, actor_name="helper_sleep", name="Sleep", max_retries=0)
    def sleep(task, seconds):
        time.sleep(seconds)

    broker.actors_ = {a.actor_name: a for a in (count, fail, flaky, chain, sleep)}
    broker.calls_ = calls
    yield broker
    broker.close()
    dramatiq.broker.global_broker = saved


def test_runs_everything_and_rows_are_final(stub, user):
    count, fail = stub.actors_["helper_count"], stub.actors_["helper_fail"]
    ok = count.send_for(user, 5)
    bad = fail.send_for(user)
    assert run_user_tasks() == 2
    ok.refresh_from_db()
    bad.refresh_from_db()
    assert (ok.state, ok.completed_steps, ok.total_steps, ok.message) == (State.SUCCEEDED, 5, 5, "5")
    assert (bad.state, bad.error, bad.error_class) == (State.FAILED, "no luck", "builtins.ValueError")
    assert last_status(count) == ok and last_status("helper_fail") == bad
    assert last_status().pk == bad.pk
    assert last_status(count).state == State.SUCCEEDED


def test_nothing_queued(stub):
    assert run_user_tasks(stub) == 0
    assert last_status() is None


def test_retries_and_follow_up_tasks_run_in_one_call(stub, user):
    flaky, chain = stub.actors_["helper_flaky"], stub.actors_["helper_chain"]
    flaky.send_for(user)
    chain.send_for(user, 3)
    assert run_user_tasks(stub, worker_threads=2) == 3 + 4
    row = last_status(flaky)
    assert (row.state, row.attempts) == (State.SUCCEEDED, 3)
    assert stub.calls_ == [1, 2, 3]
    kinds = list(row.events.values_list("kind", flat=True))
    assert kinds.count(EventKind.RETRYING) == 2 and kinds[-1] == EventKind.SUCCEEDED
    assert [s.name for s in statuses(chain)] == ["Chain 3", "Chain 2", "Chain 1", "Chain 0"]
    assert {s.state for s in statuses(chain, user)} == {State.SUCCEEDED}


def test_statuses_filter_by_user(stub, user, other_user):
    count = stub.actors_["helper_count"]
    count.send_for(user, 1)
    count.send_for(other_user, 2)
    count.send_for(user, 3)
    run_user_tasks()
    assert [s.name for s in statuses(count, user)] == ["Count 1", "Count 3"]
    assert last_status(count, other_user).name == "Count 2"
    assert statuses().count() == 3


def test_send_on_commit_inside_a_transaction(stub, user):
    count = stub.actors_["helper_count"]
    with transaction.atomic():
        status = count.send_for(user, 2)
        assert run_user_tasks(timeout=5) == 0  # not sent before the commit
    assert run_user_tasks() == 1
    status.refresh_from_db()
    assert status.state == State.SUCCEEDED


def test_fail_fast_reraises_the_task_error(stub, user):
    stub.actors_["helper_fail"].send_for(user)
    with pytest.raises(ValueError, match="no luck"):
        run_user_tasks(fail_fast=True)
    assert last_status().state == State.FAILED


def test_timeout(stub, user):
    stub.actors_["helper_sleep"].send_for(user, 1.5)
    with pytest.raises(TimeoutError):
        run_user_tasks(timeout=0.3)
    # A later call picks up where it left off.
    run_user_tasks(timeout=30)
    assert last_status().state == State.SUCCEEDED


def test_needs_a_stub_broker():
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url="redis://127.0.0.1:1/0")
    with pytest.raises(TypeError, match="StubBroker"):
        run_user_tasks(broker)
    broker.close()
