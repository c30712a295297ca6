"""status.cancel(): pending, delayed, retrying, running and finished tasks."""

import pytest

from usertasks.abort import get_backend
from usertasks.models import EventKind, UserTaskStatus
from usertasks.states import State

from . import tasks_cancel as t
from .conftest import wait_final, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def effect(redis, key):
    return int(redis.get(f"side-effect:{key}") or 0)


def events(status):
    return list(status.events.values_list("kind", flat=True))


def test_cancel_pending_never_runs_the_body(start_worker, user, other_user, redis):
    status = t.side_effect.send_for(user, label="p")
    assert status.cancel(by=other_user) is True
    assert status.state == State.CANCELED and status.cancel_outcome == "canceled"
    assert status.canceled_by == other_user and status.cancel_requested and status.finished
    ev = status.events.get(kind=EventKind.CANCELED)
    assert ev.actor == other_user
    start_worker()
    # The message is consumed (acknowledged, not dead-lettered) and the body never runs.
    wait_for(lambda: not redis.hlen("dramatiq:default.msgs"), message="message consumed")
    assert effect(redis, "ran:p") == 0
    assert not redis.exists("dramatiq:default.XQ.msgs")
    status.refresh_from_db()
    assert status.state == State.CANCELED and status.attempts == 0
    assert EventKind.STARTED not in events(status)
    assert not get_backend().is_set(status.pk)  # flag removed once the worker skipped it


def test_cancel_delayed(worker, user, redis):
    status = t.side_effect.send_for_with_options(user, kwargs={"label": "d"}, delay=1500)
    assert status.eta is not None
    assert status.cancel(by=user) is True
    assert status.state == State.CANCELED
    wait_for(lambda: not redis.hlen("dramatiq:default.DQ.msgs") and not redis.hlen("dramatiq:default.msgs"),
             timeout=30, message="delayed message consumed")
    assert effect(redis, "ran:d") == 0
    status.refresh_from_db()
    assert status.state == State.CANCELED


def test_cancel_retrying(worker, user, redis):
    status = t.fail_then_work.send_for(user, label="r")
    wait_for(lambda: status.refresh() and status.state == State.RETRYING, message="Retrying")
    assert status.cancel(by=user) is True
    assert status.state == State.CANCELED
    assert status.events.filter(kind=EventKind.CANCELED).get().detail == "Canceled while waiting to retry."
    wait_for(lambda: not redis.hlen("dramatiq:default.DQ.msgs") and not redis.hlen("dramatiq:default.msgs"),
             timeout=30, message="retry message consumed")
    assert effect(redis, "ran:r") == 0
    assert effect(redis, "attempt:r") == 1
    status.refresh_from_db()
    assert status.state == State.CANCELED and status.attempts == 1


def test_cancel_running(worker, user, other_user, redis):
    status = t.wait_steps.send_for(user, label="run", n=3000)
    wait_for(lambda: effect(redis, "started:run"), message="task started")
    wait_for(lambda: status.refresh() and status.completed_steps > 0, message="progress")
    assert status.cancel(by=other_user) is True
    assert status.cancel_outcome == "requested" and status.state == State.IN_PROGRESS
    wait_final(status)
    assert status.state == State.CANCELED
    assert status.canceled_by == other_user
    assert status.completed_steps < 3000
    assert effect(redis, "done:run") == 0
    kinds = events(status)
    assert kinds[-2:] == [EventKind.CANCEL_REQUESTED, EventKind.CANCELED]
    assert status.events.get(kind=EventKind.CANCEL_REQUESTED).actor == other_user
    assert not get_backend().is_set(status.pk)
    assert not redis.exists("dramatiq:default.XQ.msgs")  # not dead-lettered
    assert status.attempts == 1


def test_check_abort_and_abort_requested(worker, user, redis):
    status = t.check_abort_loop.send_for(user, label="ca")
    wait_for(lambda: effect(redis, "started:ca"), message="task started")
    wait_for(lambda: status.refresh() and status.state == State.IN_PROGRESS, message="In Progress")
    status.cancel(by=user)
    wait_final(status)
    assert status.state == State.CANCELED
    assert effect(redis, "saw:ca") == 1 and effect(redis, "done:ca") == 0


def test_cancel_finished_is_a_noop(worker, user, redis):
    status = t.side_effect.send_for(user, label="f")
    wait_final(status)
    before = events(status)
    assert status.cancel(by=user) is False
    assert status.cancel_outcome == "already_final"
    assert status.state == State.SUCCEEDED and status.canceled_by is None and status.cancel_requested is None
    assert events(status) == before


def test_cancel_twice(worker, user, redis):
    status = t.side_effect.send_for_with_options(user, kwargs={"label": "tw"}, delay=60000)
    assert status.cancel(by=user) is True
    assert status.cancel(by=user) is False
    assert UserTaskStatus.objects.get(pk=status.pk).state == State.CANCELED


def test_canceling_a_pending_task_sends_task_finished(user, other_user, redis):
    from usertasks.signals import task_finished

    seen = []

    def receiver(sender, status, state, **kwargs):
        seen.append((status.pk, state))

    task_finished.connect(receiver)
    try:
        status = t.side_effect.send_for(user, label="signal")
        assert status.cancel(by=other_user)
        assert seen == [(status.pk, State.CANCELED)]
    finally:
        task_finished.disconnect(receiver)


def test_flags_of_another_database_sharing_the_redis_are_not_seen(start_worker, user, redis):
    """Ids are a database's own: a flag left under the same id by another database (a reset
    development database, another site on the same Redis) must not cancel this task."""
    from usertasks.abort.redis import RedisAbortBackend

    status = t.side_effect.send_for(user, label="ns")
    other = RedisAbortBackend(key_prefix="usertasks:elsewhere:")
    other.set(status.pk)
    assert other.claim(status.pk) == 0  # that database's task of this id is canceled there
    start_worker()
    wait_final(status)
    assert status.state == State.SUCCEEDED and effect(redis, "ran:ns") == 1
    assert other.is_set(status.pk)
    other.clear([status.pk])


def test_default_key_prefix_follows_the_database(monkeypatch):
    from django.db import connection

    from usertasks.abort.redis import key_namespace

    here = key_namespace()
    assert here.startswith("usertasks:") and here.endswith(":") and len(here) == len("usertasks:") + 9
    monkeypatch.setitem(connection.settings_dict, "NAME", "another_database")
    assert key_namespace() not in (here, "usertasks:")


def test_redis_key_prefix_setting(settings, redis):
    from usertasks.abort.redis import RedisAbortBackend, key_namespace

    settings.USERTASKS = {"REDIS_KEY_PREFIX": "site-a:"}
    assert key_namespace() == "site-a:"
    backend = RedisAbortBackend()
    backend.set(12345)
    try:
        assert redis.exists("site-a:abort:12345")
        assert backend.flagged([12345, 12346]) == {12345}
    finally:
        backend.clear([12345])
    assert not redis.exists("site-a:abort:12345")


def test_cancel_of_a_message_claimed_at_prefetch_ends_it_at_once(start_worker, user, redis):
    """One worker thread busy with a long task; the next message was fetched and claimed by the
    consumer (a batch at a time), so a cancel sees it as running. The abort poller, which
    watches prefetched claims too, ends it Canceled at once, long before a thread is free, and
    its body never runs."""
    start_worker(processes=1, threads=1)
    busy = t.wait_steps.send_for(user, label="busy", n=600, delay=0.01)
    wait_for(lambda: busy.refresh() and busy.state == State.IN_PROGRESS, message="the long task running")
    queued = t.side_effect.send_for(user, label="prefetched")  # sent once the only thread is busy
    backend = get_backend()
    wait_for(lambda: backend.claimed([queued.pk]), message="the next message claimed at prefetch")
    queued.refresh_from_db()
    assert queued.state == State.PENDING
    assert queued.cancel(by=user) is True
    wait_for(lambda: queued.refresh() and queued.state == State.CANCELED, timeout=3, message="Canceled")
    busy.refresh_from_db()
    assert busy.state == State.IN_PROGRESS  # the only thread is still busy: the poller did it
    assert queued.events.filter(kind=EventKind.CANCELED).count() == 1
    assert busy.cancel(by=user) is True
    wait_final(busy, timeout=30)
    # The prefetched message is then taken and skipped: consumed, body never run, flag cleared.
    wait_for(lambda: not redis.hlen("dramatiq:default.msgs"), message="messages consumed")
    assert effect(redis, "ran:prefetched") == 0
    queued.refresh_from_db()
    assert queued.state == State.CANCELED and queued.attempts == 0 and queued.started is None
    assert queued.events.filter(kind=EventKind.CANCELED).count() == 1
    wait_for(lambda: not backend.is_set(queued.pk), message="the flag cleared")


def test_claim_many_matches_claim(redis):
    """The batched claim gives, task by task, what one claim each would give."""
    from usertasks.abort import AGAIN, FIRST, SKIP
    from usertasks.abort.redis import RedisAbortBackend

    backend = get_backend()
    assert isinstance(backend, RedisAbortBackend)
    base = 10**9
    backend.set(base + 2)  # a flagged task
    backend.set(base + 90)  # a flagged container
    assert backend.claim(base + 3) == FIRST  # claimed before: a redelivery
    tasks = [(base + 1, None), (base + 2, None), (base + 3, None), (base + 4, base + 90), (base + 5, base + 91)]
    assert backend.claim_many(tasks) == [FIRST, SKIP, AGAIN, SKIP, FIRST]
    assert backend.claim_many(tasks[:1]) == [AGAIN]
    assert backend.claim_many([]) == []
    assert backend.claimed([base + i for i in range(1, 6)]) == {base + 1, base + 3, base + 5}


def test_the_abort_poller_reads_the_flags_once_per_interval(redis):
    """However often the poller ticks, the flags are read at most once per poll interval, and a
    raised flag reaches the running task on the next read."""
    import time

    from usertasks.context import TaskContext
    from usertasks.middleware.abort import AbortPoller
    from usertasks.writer import get_writer

    backend = get_backend()
    reads = []
    flagged = backend.flagged
    backend.flagged = lambda ids: reads.append(list(ids)) or flagged(ids)
    ctx = TaskContext(status_id=10**9 + 7, message_id="m", actor_name="a")
    writer = get_writer()
    writer.register(ctx)
    try:
        poller = AbortPoller()  # its thread is not started: the test ticks it
        now = time.monotonic()
        for _ in range(50):
            poller.tick(now)
        assert reads == [[ctx.status_id]]
        backend.set(ctx.status_id)
        poller.tick(now + backend.poll_interval)
        assert len(reads) == 2 and ctx.abort_requested
    finally:
        writer.unregister(ctx)
        del backend.flagged
        backend.clear([ctx.status_id])


def test_the_abort_poller_thread_reads_every_interval_while_a_task_runs(redis):
    """The poller's own thread reads the flags once per interval while a tracked task runs (a
    late read now and then on a busy machine, never one interval in two), and stops reading
    once none does."""
    import time

    from usertasks.context import TaskContext
    from usertasks.middleware.abort import IDLE_GRACE, AbortPoller
    from usertasks.writer import get_writer

    from .conftest import wait_for

    backend = get_backend()
    reads = []
    flagged = backend.flagged
    backend.flagged = lambda ids: reads.append(time.monotonic()) or flagged(ids)
    poller = AbortPoller().start()
    writer = get_writer()
    ctx = TaskContext(status_id=10**9 + 11, message_id="m", actor_name="a")
    try:
        writer.register(ctx)
        poller.wake()
        wait_for(lambda: len(reads) >= 41, timeout=30, message="40 intervals of reads")
        writer.unregister(ctx)
        stopped = len(reads)
        wait_for(lambda: poller.polls == len(reads) and time.monotonic() - reads[-1] > IDLE_GRACE / 4,
                 timeout=10, message="the poller to notice there is nothing left to watch")
        assert len(reads) <= stopped + 1
    finally:
        writer.unregister(ctx)
        poller.stop()
        del backend.flagged
    gaps = sorted(b - a for a, b in zip(reads[:41], reads[1:41]))
    assert gaps[len(gaps) // 2] < 1.2 * backend.poll_interval, gaps
    assert gaps[int(len(gaps) * 0.9)] < 1.5 * backend.poll_interval, gaps


def _tracked_broker(redis, namespace):
    import dramatiq

    from usertasks import user_task
    from usertasks.redis import RedisBroker

    broker = RedisBroker(client=redis, namespace=namespace)
    broker.flush_all()

    @user_task(broker=broker, queue_name="claimq", actor_name=f"{namespace}_job")
    def job(task, i):
        pass

    @dramatiq.actor(broker=broker, queue_name="claimq", actor_name=f"{namespace}_plain")
    def plain(i):
        pass

    return broker, job, plain


def test_fetch_and_claim_takes_a_batch_as_dramatiq_fetches_it_and_claims_it(redis):
    """One script fetches the batch (the worker's heartbeat, ids moved to its set of unacknowledged
    messages, their data in order) and claims its tracked messages: what Dramatiq's fetch and
    claim_many would do in two round trips."""
    import json

    from usertasks.abort import AGAIN, FIRST, SKIP, prefetch
    from usertasks.protocol import PARENT_OPTION, STATUS_OPTION

    broker, job, plain = _tracked_broker(redis, "fetchclaim")
    backend = get_backend()
    base = 10**9 + 100
    backend.set(base + 2)  # a canceled task
    backend.set(base + 90)  # a canceled container
    assert backend.claim(base + 3) == FIRST  # claimed before: a redelivery
    sent = [
        job.send_with_options(args=(1,), **{STATUS_OPTION: base + 1}),
        plain.send(2),
        job.send_with_options(args=(3,), **{STATUS_OPTION: base + 2}),
        job.send_with_options(args=(4,), **{STATUS_OPTION: base + 3}),
        job.send_with_options(args=(5,), **{STATUS_OPTION: base + 4, PARENT_OPTION: base + 90}),
        job.send_with_options(args=(6,), **{STATUS_OPTION: base + 5, PARENT_OPTION: base + 91}),
    ]
    consumer = broker.consume("claimq", prefetch=5, timeout=200)
    prefetch.forget()
    try:
        data = consumer._fetch_and_claim(backend, 5)
        fetched = [json.loads(d) for d in data]
        assert [m["message_id"] for m in fetched] == [m.message_id for m in sent[:5]]
        assert consumer._claims == {
            sent[0].message_id: FIRST, sent[2].message_id: SKIP, sent[3].message_id: AGAIN,
            sent[4].message_id: SKIP,
        }
        assert prefetch.watched() == {base + 1: None}  # the first claims are watched for cancels
        unacked = {m.decode() for m in redis.smembers(f"fetchclaim:__acks__.{broker.broker_id}.claimq")}
        assert unacked == {m["options"]["redis_message_id"] for m in fetched}
        assert redis.zscore("fetchclaim:__heartbeats__", broker.broker_id) is not None
        assert redis.llen("fetchclaim:claimq") == 1
        assert backend.claimed([base + 1, base + 4, base + 5]) == {base + 1}
        # The rest comes with the next fetch; an empty queue gives an empty batch.
        data = consumer._fetch_and_claim(backend, 5)
        assert len(data) == 1 and consumer._claims == {sent[5].message_id: FIRST}
        assert prefetch.watched() == {base + 1: None, base + 5: base + 91}
        assert consumer._fetch_and_claim(backend, 5) == []
    finally:
        prefetch.forget()
        consumer.close()
        backend.clear([base + i for i in (1, 2, 3, 4, 5, 90)])
        broker.flush_all()
        broker.close()


@pytest.mark.parametrize("maintenance", [0, 1000000])
def test_a_windowed_consumer_hands_out_messages_claimed_with_their_batch(redis, monkeypatch, maintenance):
    """A worker's Redis consumer fetches and claims in one round trip; the fetches that do
    Dramatiq's queue maintenance go through Dramatiq's own fetch (maintenance included), then
    claim_many."""
    from usertasks.abort import FIRST, prefetch
    from usertasks.protocol import PREFETCH_CLAIM, STATUS_OPTION
    from usertasks.redis import Consumer

    broker, job, plain = _tracked_broker(redis, f"windowclaim{maintenance}")
    broker.maintenance_chance = maintenance
    backend = get_backend()
    base = 10**9 + 200
    calls = {"script": 0, "claim_many": 0, "maintenance": 0}
    fetch, claim_many, dramatiq_fetch = Consumer._fetch_and_claim, backend.claim_many, broker.fetch

    def counting(name, fn):
        def call(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return call

    def maintenance_fetch(queue_name, count, *, maintenance=False):
        calls["maintenance"] += maintenance
        return dramatiq_fetch(queue_name, count, maintenance=maintenance)

    monkeypatch.setattr(Consumer, "_fetch_and_claim", counting("script", fetch))
    monkeypatch.setattr(backend, "claim_many", counting("claim_many", claim_many))
    monkeypatch.setattr(broker, "fetch", maintenance_fetch)
    for i in range(3):
        job.send_with_options(args=(i,), **{STATUS_OPTION: base + i})
    plain.send(9)
    consumer = broker.consume("claimq", prefetch=8, timeout=200)
    try:
        proxies = [next(consumer) for _ in range(4)]
        assert [getattr(p, PREFETCH_CLAIM, None) for p in proxies] == [FIRST, FIRST, FIRST, None]
        if maintenance:
            assert calls["script"] == 0 and calls["claim_many"] == 1 and calls["maintenance"] >= 1
        else:
            assert calls == {"script": 1, "claim_many": 0, "maintenance": 0}
        assert next(consumer) is None  # empty: a backoff, then the loop gets control back
    finally:
        prefetch.forget()
        consumer.close()
        backend.clear([base + i for i in range(3)])
        broker.flush_all()
        broker.close()
