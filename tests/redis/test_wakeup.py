"""Idle Redis consumers are woken by usertasks' sends instead of waiting out their backoff."""

import threading
import time

import pytest
from django.test import override_settings

from usertasks.broker import enqueue_many
from usertasks.redis import wakeup

from ..helpers import wait_for, wait_final


@pytest.fixture
def wake_broker(redis):
    """A Redis broker of its own namespace, an actor on queue ``wakeq`` and a consumer factory."""
    import dramatiq

    from usertasks.redis import RedisBroker

    broker = RedisBroker(client=redis, namespace="waketest")
    broker.flush_all()

    @dramatiq.actor(broker=broker, queue_name="wakeq")
    def job(i):
        pass

    consumers = []

    def consume(timeout_ms, prefetch=4):
        consumer = broker.consume("wakeq", prefetch=prefetch, timeout=timeout_ms)
        consumers.append(consumer)
        return consumer

    yield broker, job, consume
    for consumer in consumers:
        consumer.close()
    broker.flush_all()
    broker.close()


def _idle_next(consumer, backoff_misses=20):
    """``next(consumer)`` on an empty queue, with the consumer already at its longest backoff
    (the worker timeout); returns ``(result, seconds)``."""
    consumer.misses = backoff_misses
    t0 = time.monotonic()
    result = next(consumer)
    return result, time.monotonic() - t0


def _send_later(broker, job, delay, n=1):
    timer = threading.Timer(delay, lambda: enqueue_many(broker, [(job.message(i), None) for i in range(n)]))
    timer.start()
    return timer


def _publish_together(redis, name, n):
    """``n`` wake-ups on ``name`` in one transaction: the server writes them to a subscriber in
    one go, so a reader that finds the first finds them all."""
    pipe = redis.pipeline(transaction=True)
    for _ in range(n):
        pipe.publish(name, "")
    pipe.execute()


def test_a_send_ends_the_backoff_of_an_idle_consumer(wake_broker):
    """The consumer's backoff is 10-20 s (a 20 s worker timeout, with Dramatiq's jitter); a send
    0.3 s into it wakes the consumer, which then hands out the message."""
    broker, job, consume = wake_broker
    consumer = consume(timeout_ms=20000)
    assert isinstance(consumer.waker, wakeup.Waker)
    next(consumer)  # an empty fetch and a short backoff: subscribes
    assert consumer.waker.subscribed
    for n in (1, 3):  # a single send (send_for) and a chunk (send_many_for, fan-out)
        timer = _send_later(broker, job, 0.3, n)
        result, seconds = _idle_next(consumer)
        timer.join()
        assert result is None and 0.25 < seconds < 9.0  # (never before the send, long before the backoff's end)
        got = [next(consumer) for _ in range(n)]
        assert all(p is not None for p in got)
        for proxy in got:
            consumer.ack(proxy)


@override_settings(USERTASKS={"WAKE_CONSUMERS": False})
def test_without_wake_ups_the_consumer_sleeps_its_whole_backoff(wake_broker):
    broker, job, consume = wake_broker
    consumer = consume(timeout_ms=1500)
    assert consumer.waker is None
    timer = _send_later(broker, job, 0.1)
    result, seconds = _idle_next(consumer)  # a backoff of 0.75-1.5 s, whatever is sent
    timer.join()
    assert result is None and seconds > 0.7
    assert next(consumer) is not None


def test_only_a_push_onto_an_empty_queue_publishes(wake_broker, redis):
    broker, job, consume = wake_broker
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(wakeup.channel("waketest", "wakeq"))
    try:
        wait_for(lambda: redis.pubsub_numsub(wakeup.channel("waketest", "wakeq"))[0][1] == 1)

        def heard():
            """Wake-ups published in the last moment (``None``s: timeouts and confirmations)."""
            deadline, n = time.monotonic() + 0.2, 0
            while time.monotonic() < deadline:
                n += pubsub.get_message(timeout=0.05) is not None
            return n

        enqueue_many(broker, [(job.message(0), None)])
        assert heard() == 1
        enqueue_many(broker, [(job.message(i), None) for i in range(3)])
        enqueue_many(broker, [(job.message(9), None)])
        assert heard() == 0  # the queue was not empty: its consumers are not waiting
        job.send(10)  # Dramatiq's own send never publishes
        broker.flush("wakeq")
        job.send(11)
        assert heard() == 0
        broker.flush("wakeq")
        enqueue_many(broker, [(job.message(12), 500)])  # a delayed message: the delay queue's channel
        assert heard() == 0
    finally:
        pubsub.close()


def test_a_busy_consumer_reads_its_wake_ups_when_its_window_is_full(wake_broker, redis):
    broker, job, consume = wake_broker
    consumer = consume(timeout_ms=200, prefetch=1)
    next(consumer)  # subscribes
    enqueue_many(broker, [(job.message(0), None)])
    assert next(consumer) is not None  # the window (1) is full from now on
    _publish_together(redis, wakeup.channel("waketest", "wakeq"), 50)
    assert consumer.waker._pubsub.connection.can_read(timeout=10)  # the wake-ups have arrived
    assert next(consumer) is None  # waits for room (0.2 s), then reads the wake-ups
    assert not consumer.waker._pubsub.connection.can_read(timeout=0)  # nothing left in the subscription


def test_a_broken_subscription_falls_back_to_polling_then_subscribes_again(wake_broker, redis, monkeypatch):
    broker, job, consume = wake_broker
    consumer = consume(timeout_ms=300)
    waker = consumer.waker
    next(consumer)
    assert waker.subscribed
    name = wakeup.channel("waketest", "wakeq")

    def refuse(*args, **kwargs):
        raise ConnectionError("pub/sub refused")

    monkeypatch.setattr(waker._pubsub, "get_message", refuse)
    result, seconds = _idle_next(consumer)  # the error: a plain sleep for the rest of the backoff
    assert result is None and 0.1 < seconds < 5.0  # the backoff is 0.15-0.3 s
    assert not waker.subscribed
    # (the server drops the subscription when it sees the connection close)
    wait_for(lambda: redis.pubsub_numsub(name)[0][1] == 0, timeout=5, message="the subscription to go")
    enqueue_many(broker, [(job.message(0), None)])
    assert wait_for(lambda: next(consumer), timeout=5) is not None  # polling still finds it
    assert not waker.subscribed  # not before RETRY_AFTER
    waker._retry_at = 0
    next(consumer)
    assert waker.subscribed and redis.pubsub_numsub(name)[0][1] == 1
    consumer.close()
    wait_for(lambda: redis.pubsub_numsub(name)[0][1] == 0, timeout=5, message="the subscription to go")


def test_an_idle_worker_is_woken_by_a_send(start_worker, redis, user, capfd):
    """The worker's idle consumer (a 10 s worker timeout: backoffs of seconds) listens on its
    queue's wake channel; ``send_for`` publishes there, and the consumer says it was woken early
    (its log at DEBUG: "woken after <s> of a <s> backoff"), then runs the task."""
    import re

    from tests import tasks

    start_worker(threads=2, extra_env={"dramatiq_worker_timeout": "10000",
                                       "USERTASKS_TEST_DEBUG_LOGGERS": "usertasks.wakeup"})
    name = wakeup.channel("dramatiq", "default")
    wait_for(lambda: redis.pubsub_numsub(name)[0][1] >= 1, message="the worker's subscription")
    woken = re.compile(r"dramatiq:default\.wake woken after ([0-9.]+) s of a ([0-9.]+) s backoff")
    seen = []

    def wake_ups():
        seen.extend(woken.findall(capfd.readouterr().err))
        return seen

    for i in range(3):  # (a consumer caught in its fetch at the very moment of a send is not woken)
        wait_final(tasks.noop.send_for(user, label=f"wake{i}"))
        if wake_ups():
            break
    assert wake_ups(), "no consumer was woken by a send"
    assert all(float(waited) < float(backoff) for waited, backoff in seen), seen


def test_a_consumer_that_keeps_finding_messages_reads_its_wake_ups_once_a_second(wake_broker, redis, monkeypatch):
    broker, job, consume = wake_broker
    consumer = consume(timeout_ms=200)
    waker = consumer.waker
    next(consumer)  # subscribes
    name = wakeup.channel("waketest", "wakeq")
    for round_ in range(2):
        _publish_together(redis, name, 20)
        assert waker._pubsub.connection.can_read(timeout=10)  # the wake-ups have arrived
        waker._drain_at = 0  # the next read is due (DRAIN_EVERY, a second, has passed)
        job.send(round_)  # (Dramatiq's own send: no wake-up of its own to race with the read)
        proxy = next(consumer)  # a fetch that finds a message: no wait, but a read first
        assert proxy is not None
        consumer.ack(proxy)
        assert waker._drain_at > time.monotonic()  # read now, next time in a second
        assert not waker._pubsub.connection.can_read(timeout=0)  # nothing left in the subscription
