"""The acker: acknowledgements wait for their commits, in order, and are bounded."""

import threading

from usertasks import acks
from usertasks.process import PerProcess


class _Op:
    def __init__(self):
        self.done = threading.Event()


class _Message:
    failed = False

    def __init__(self, i, queue_name="default"):
        self.message_id = f"m{i}"
        self.queue_name = queue_name


def test_acknowledges_only_after_the_commit_in_order_and_is_bounded(monkeypatch):
    monkeypatch.setattr(acks, "_queues", {"default"})
    monkeypatch.setattr(acks, "MAX_PENDING", 3)
    acker = acks.Acker()
    monkeypatch.setattr(acks, "_ackers", PerProcess(lambda: acker))
    assert acks.get_acker() is acker
    acked = []
    ops = [_Op() for _ in range(3)]
    messages = [_Message(i) for i in range(3)]
    assert acks.deferring(messages[0])
    for op, message in zip(ops, messages):
        acker.defer(op, acked.append, message)
    assert acker.pending == 3
    assert not acks.deferring(_Message(9))  # full: the next worker thread waits for its own commit
    assert not acks.deferring(_Message(9, queue_name="elsewhere"))  # a consumer that was not wrapped
    assert not acker.drain(timeout=0.3) and acked == []  # nothing committed, nothing acknowledged
    ops[1].done.set()
    assert not acker.drain(timeout=0.3) and acked == []  # the first end is not committed yet
    ops[0].done.set()
    ops[2].done.set()
    assert acker.drain(timeout=5)
    assert acked == messages and acker.pending == 0
    assert acks.deferring(_Message(9))


def test_a_failing_acknowledgement_does_not_stop_the_others(monkeypatch, caplog):
    acker = acks.Acker()
    acked = []

    def flaky(message):
        if message.message_id == "m0":
            raise RuntimeError("broker gone")
        acked.append(message.message_id)

    for i in range(3):
        op = _Op()
        op.done.set()
        acker.defer(op, flaky, _Message(i))
    assert acker.drain(timeout=5)
    assert acked == ["m1", "m2"]
    assert "could not acknowledge message m0" in caplog.text


def test_install_wraps_a_consumer_thread_once(monkeypatch):
    monkeypatch.setattr(acks, "_queues", set())
    monkeypatch.setattr(acks, "_ackers", PerProcess(acks.Acker))
    direct = []

    class Consumer:
        queued_message_ids = {"m1", "m2"}

    class Thread:
        queue_name = "q"
        consumer = Consumer()

        def post_process_message(self, message):
            direct.append(message.message_id)

    thread = Thread()
    acks.install(thread)
    wrapped = thread.post_process_message
    acks.install(thread)
    assert thread.post_process_message is wrapped and acks._queues == {"q"}
    plain = _Message(1, "q")
    thread.post_process_message(plain)  # no pending end: straight to Dramatiq's own
    assert direct == ["m1"]
    pending, op = _Message(2, "q"), _Op()
    acks.defer(pending, op)
    thread.post_process_message(pending)
    assert direct == ["m1"] and "m2" not in Consumer.queued_message_ids  # out of the prefetch window
    op.done.set()
    assert acks.drain(timeout=5) and direct == ["m1", "m2"]


def test_receivers_act_from_the_hints_alone(monkeypatch):
    """With the built-in notifier and the compat bridge (both declared in ACTS), a run that
    does not email and has no user_task_stopped listener needs nothing after its commit; any
    undeclared receiver, or a user_task_stopped listener, makes the worker wait again."""
    from user_tasks import user_task_stopped
    from user_tasks.models import UserTaskStatus as CompatStatus

    from usertasks.signals import receivers_act, task_finished
    from usertasks.states import State

    monkeypatch.setattr(user_task_stopped, "receivers", [])  # tests.tasks_compat listens, if imported
    assert not receivers_act(parent_id=None, state=State.SUCCEEDED, notify=False)
    assert not receivers_act(parent_id=7, state=State.FAILED, notify=True)  # children never email
    assert receivers_act(parent_id=None, state=State.FAILED, notify=["Failed"])  # this one emails

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


def _redis_consumer(redis, prefetch, timeout_ms):
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(client=redis, namespace="windowtest")
    broker.flush_all()

    @dramatiq.actor(broker=broker, queue_name="window")
    def job(i):
        pass

    for i in range(5):
        job.send(i)
    acks._wrap_consume(broker)
    return broker, broker.consume("window", prefetch=prefetch, timeout=timeout_ms)


def test_a_full_prefetch_window_waits_for_room_not_a_blind_sleep(redis):
    """Dramatiq's Redis consumer sleeps an idle-queue backoff when its prefetch window is full;
    the windowed one fetches as soon as an acknowledgement frees a slot."""
    import time

    broker, consumer = _redis_consumer(redis, prefetch=2, timeout_ms=5000)
    try:
        assert isinstance(consumer, acks._Windowed) and type(consumer).__name__ == "_RedisConsumer"
        first, second = next(consumer), next(consumer)
        assert first is not None and second is not None
        threading.Timer(0.2, consumer.ack, [first]).start()
        t0 = time.monotonic()
        third = next(consumer)  # the window is full: waits for the ack, then fetches
        elapsed = time.monotonic() - t0
        assert third is not None and third.message_id not in (first.message_id, second.message_id)
        assert 0.15 < elapsed < 2.0
        # A slot freed by the acker's hand-over (the message leaves the window unacknowledged).
        consumer.queued_message_ids.discard(second.message_id)
        acks._room(consumer)
        assert next(consumer) is not None
    finally:
        consumer.close()
        broker.flush_all()
        broker.close()


def test_a_window_that_stays_full_gives_the_loop_back_after_the_timeout(redis):
    import time

    broker, consumer = _redis_consumer(redis, prefetch=1, timeout_ms=300)
    try:
        assert next(consumer) is not None
        t0 = time.monotonic()
        assert next(consumer) is None  # nothing acknowledged: Dramatiq's loop gets control back
        assert 0.25 < time.monotonic() - t0 < 2.0
    finally:
        consumer.close()
        broker.flush_all()
        broker.close()


def test_done_flag_wakes_every_waiter_once_set():
    from usertasks.writer import Done

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


def test_a_batch_of_acknowledgements_is_one_script_call_with_hooks_per_message(redis):
    """The acker acknowledges what committed together in one call of a script doing Dramatiq's
    "ack" for each message: each leaves the worker's unacknowledged set and the queue's hash,
    the broker's ack hooks run once per message, and the consumer's window frees."""
    import types

    broker, consumer = _redis_consumer(redis, prefetch=5, timeout_ms=500)
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

    broker.middleware.append(Hooks())
    try:
        messages = [next(consumer) for _ in range(5)]
        acks_key = f"windowtest:__acks__.{broker.broker_id}.window"
        assert redis.scard(acks_key) == 5 and redis.hlen("windowtest:window.msgs") == 5
        assert acks._dramatiqs_own(consumer, broker)
        thread = types.SimpleNamespace(consumer=consumer, broker=broker)
        assert acks._ack_together(thread, messages[:4]) is True
        assert redis.scard(acks_key) == 1 and redis.hlen("windowtest:window.msgs") == 1
        assert consumer.queued_message_ids == {messages[4].message_id}
        ids = [m.message_id for m in messages[:4]]
        assert seen == [("before", i) for i in ids] + [("after", i) for i in ids]
    finally:
        consumer.close()
        broker.flush_all()
        broker.close()
