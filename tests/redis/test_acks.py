"""The acker and the consumer of usertasks.redis: acknowledgements wait for their commits, in
order, bounded, in batches, off the worker threads."""

import threading
import time

import pytest

from usertasks.protocol import DEFERRING_CONSUMER, PENDING_END
from usertasks.redis import acks
from usertasks.transitions import Done


class _Change:
    def __init__(self):
        self.done = Done()


class _Message:
    failed = False

    def __init__(self, i):
        self.message_id = f"m{i}"


class _Consumer:
    """What the acker uses of a consumer."""

    def __init__(self, fail=()):
        self.acked, self.rejected, self.fail = [], [], set(fail)

    def ack_now(self, message):
        if message.message_id in self.fail:
            raise RuntimeError("broker gone")
        self.acked.append(message)

    def reject_now(self, message):
        self.rejected.append(message)


def test_acknowledges_only_after_the_commit_in_order_and_is_bounded(monkeypatch):
    from usertasks.redis import consumer as consumer_module

    monkeypatch.setattr(consumer_module, "MAX_PENDING", 3)
    acker = acks.Acker()
    consumer = _Consumer()
    gate = type("Gate", (), {"acker": acker})()  # what can_defer() reads
    can_defer = consumer_module.Consumer.can_defer
    changes = [_Change() for _ in range(3)]
    messages = [_Message(i) for i in range(3)]
    assert can_defer(gate)
    for change, message in zip(changes, messages):
        acker.defer(consumer, change, message)
    assert acker.pending == 3
    assert not can_defer(gate)  # full: the next worker thread waits for its own commit
    assert not acker.drain(timeout=0.3) and consumer.acked == []  # nothing committed, nothing acknowledged
    changes[1].done.set()
    assert not acker.drain(timeout=0.3) and consumer.acked == []  # the first end is not committed yet
    changes[0].done.set()
    changes[2].done.set()
    assert acker.drain(timeout=5)
    # One consumer's successes go out in one script call; this one is no Redis consumer, so the
    # acker falls back to acknowledging them one by one, in order.
    assert consumer.acked == messages and acker.pending == 0
    assert can_defer(gate)


def test_a_failing_acknowledgement_does_not_stop_the_others(caplog):
    acker = acks.Acker()
    consumer = _Consumer(fail={"m0"})
    for i in range(3):
        change = _Change()
        change.done.set()
        acker.defer(consumer, change, _Message(i))
    rejected = _Change()
    rejected.done.set()
    acker.defer(consumer, rejected, _Message(3), reject=True)
    assert acker.drain(timeout=5)
    assert [m.message_id for m in consumer.acked] == ["m1", "m2"]
    assert [m.message_id for m in consumer.rejected] == ["m3"]
    assert "could not acknowledge message m0" in caplog.text


def test_receivers_act_from_the_hints_alone(monkeypatch):
    """With the compat bridge (declared in ACTS) and notifications in the outbox (no receiver),
    a run with no user_task_stopped listener needs nothing after its commit; any
    undeclared receiver, or a user_task_stopped listener, makes the worker wait again."""
    from user_tasks import user_task_stopped
    from user_tasks.models import UserTaskStatus as CompatStatus

    from usertasks.signals import receivers_act, task_finished
    from usertasks.states import State

    monkeypatch.setattr(user_task_stopped, "receivers", [])  # tests.tasks_compat listens, if imported
    assert not receivers_act(parent_id=None, state=State.SUCCEEDED, notify=False)
    assert not receivers_act(parent_id=7, state=State.FAILED, notify=True)  # children never email
    # Its email is in the outbox, committed with the state: nothing waits for the commit.
    assert not receivers_act(parent_id=None, state=State.FAILED, notify=["Failed"])

    def listener(**kwargs):
        pass

    user_task_stopped.connect(listener, sender=CompatStatus, dispatch_uid="test.stopped")
    try:
        assert receivers_act(parent_id=7, state=State.SUCCEEDED, notify=False)
    finally:
        user_task_stopped.disconnect(dispatch_uid="test.stopped", sender=CompatStatus)
    task_finished.connect(listener, dispatch_uid="test.finished")
    try:
        assert receivers_act(parent_id=7, state=State.SUCCEEDED, notify=False)
    finally:
        task_finished.disconnect(dispatch_uid="test.finished")
    assert not receivers_act(parent_id=7, state=State.SUCCEEDED, notify=False)


@pytest.fixture
def window_broker(redis):
    """A usertasks RedisBroker on the test Redis with five messages on queue ``window``."""
    import dramatiq

    from usertasks.redis import RedisBroker

    broker = RedisBroker(client=redis, namespace="windowtest")
    broker.flush_all()

    @dramatiq.actor(broker=broker, queue_name="window")
    def job(i):
        pass

    for i in range(5):
        job.send(i)
    yield broker
    broker.flush_all()
    broker.close()


def test_a_full_prefetch_window_waits_for_room_not_a_blind_sleep(window_broker):
    """Dramatiq's Redis consumer sleeps an idle-queue backoff when its prefetch window is full;
    usertasks' fetches as soon as an acknowledgement frees a slot."""
    from usertasks.redis import Consumer

    consumer = window_broker.consume("window", prefetch=2, timeout=5000)
    try:
        assert isinstance(consumer, Consumer)
        first, second = next(consumer), next(consumer)
        assert first is not None and second is not None
        assert vars(first)[DEFERRING_CONSUMER] is consumer  # the middleware may leave the ack to it
        threading.Timer(0.2, consumer.ack, [first]).start()
        t0 = time.monotonic()
        third = next(consumer)  # the window is full: waits for the ack, then fetches
        elapsed = time.monotonic() - t0
        assert third is not None and third.message_id not in (first.message_id, second.message_id)
        assert 0.15 < elapsed < 2.0
        # A slot freed by the hand-over to the acker (the message leaves the window unacknowledged).
        change = _Change()
        setattr(second, PENDING_END, change)
        consumer.ack(second)
        assert second.message_id not in consumer.queued_message_ids
        assert next(consumer) is not None
        change.done.set()
        assert consumer.acker.drain(consumer, timeout=5)
    finally:
        consumer.close()


def test_a_window_that_stays_full_gives_the_loop_back_after_the_timeout(window_broker):
    consumer = window_broker.consume("window", prefetch=1, timeout=300)
    try:
        assert next(consumer) is not None
        t0 = time.monotonic()
        assert next(consumer) is None  # nothing acknowledged: Dramatiq's loop gets control back
        assert 0.25 < time.monotonic() - t0 < 2.0
    finally:
        consumer.close()


def test_done_flag_wakes_every_waiter_once_set():
    done = Done()
    assert not done.is_set() and done.wait(0.01) is False
    woken = []
    threads = [threading.Thread(target=lambda: woken.append(done.wait(10))) for _ in range(5)]
    for t in threads:
        t.start()
    done.set()
    done.set()  # a second set is harmless
    for t in threads:
        t.join(10)
    assert woken == [True] * 5 and done.is_set() and done.wait() is True and done.wait(0) is True


def test_dramatiqs_consumer_thread_hands_pending_ends_to_the_acker_in_one_script_call(window_broker, redis):
    """Through Dramatiq's own ConsumerThread.post_process_message (the worker thread's path): a
    message without a pending end is acknowledged at once; messages whose ends wait for their
    commit are acknowledged by the acker once committed, what committed together in one call of
    a script doing Dramatiq's "ack" for each (each leaves the worker's unacknowledged set and the
    queue's hash), and the broker's ack hooks run once per message."""
    from queue import PriorityQueue

    from dramatiq.worker import _ConsumerThread as ConsumerThread  # (public in Dramatiq 2 only)

    seen = []

    class Hooks:
        def __getattr__(self, name):
            if name.startswith(("before_", "after_")):
                return lambda *args, **kwargs: None
            raise AttributeError(name)

        def before_ack(self, broker, message):
            seen.append(("before", message.message_id))

        def after_ack(self, broker, message):
            seen.append(("after", message.message_id))

    window_broker.middleware.append(Hooks())
    thread = ConsumerThread(broker=window_broker, queue_name="window", prefetch=5, work_queue=PriorityQueue(),
                            worker_timeout=500)
    thread.consumer = consumer = window_broker.consume("window", prefetch=5, timeout=500)
    calls = []
    original = acks._ack_together
    try:
        messages = [next(consumer) for _ in range(5)]
        acks_key = f"windowtest:__acks__.{window_broker.broker_id}.window"
        assert redis.scard(acks_key) == 5 and redis.hlen("windowtest:window.msgs") == 5
        thread.post_process_message(messages[0])  # no pending end: acknowledged now
        assert redis.scard(acks_key) == 4 and redis.hlen("windowtest:window.msgs") == 4
        change = _Change()
        for message in messages[1:4]:
            setattr(message, PENDING_END, change)
            thread.post_process_message(message)  # handed over: the worker thread goes on
        assert redis.scard(acks_key) == 4  # nothing committed: nothing acknowledged
        assert consumer.queued_message_ids == {messages[4].message_id}  # out of the prefetch window
        acks._ack_together = lambda c, ms: calls.append(len(ms)) or original(c, ms)
        change.done.set()
        assert consumer.acker.drain(consumer, timeout=5)
        assert calls == [3]
        assert redis.scard(acks_key) == 1 and redis.hlen("windowtest:window.msgs") == 1
        ids = [m.message_id for m in messages[:4]]
        assert sorted(seen) == sorted([("before", i) for i in ids] + [("after", i) for i in ids])
    finally:
        acks._ack_together = original
        consumer.close()
