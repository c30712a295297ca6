"""usertasks.redis's consumer fetches a batch and claims its tracked messages in one round trip."""

import pytest

from usertasks.abort import get_backend

pytestmark = pytest.mark.django_db(transaction=True)


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
