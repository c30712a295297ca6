"""usertasks.redis's Lua scripts against the installed Dramatiq's dispatch.lua.

Each script that does what a command of Dramatiq's ``dispatch.lua`` does (enqueue, fetch, ack) is
run on a copy of the same Redis data as Dramatiq's own command, in two namespaces of one server;
afterwards the two namespaces must hold the same keys with the same values, and the replies must
be the same.  tox runs this on Dramatiq 1.17 and on 2.x: a Dramatiq release that changes its
layout fails here before it can confuse a worker.
"""

import uuid

import pytest
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker as DramatiqRedisBroker

from usertasks.rediscalls import Script
from usertasks.redis import broker as fast_broker
from usertasks.redis import consumer as fast_consumer
from usertasks.redis.acks import _ACK_MANY

QUEUE = "mirrorq"


@pytest.fixture
def twins(redis):
    """Dramatiq's broker on namespace ``theirs`` and usertasks' on ``ours`` (same worker id),
    no maintenance unless a test asks for it; both namespaces emptied before and after."""
    from usertasks.redis import RedisBroker

    theirs = DramatiqRedisBroker(client=redis, namespace="theirs", maintenance_chance=0)
    ours = RedisBroker(client=redis, namespace="ours", maintenance_chance=0)
    ours.broker_id = theirs.broker_id
    _wipe(redis)
    yield theirs, ours
    _wipe(redis)


def _wipe(redis):
    for ns in ("theirs", "ours"):
        keys = list(redis.scan_iter(f"{ns}:*"))
        if keys:
            redis.delete(*keys)


def _state(redis, namespace, *, heartbeats=True):
    """Every key of ``namespace`` (its prefix cut) with its value; the heartbeats' member set
    only (their scores are clock readings)."""
    out = {}
    for key in redis.scan_iter(f"{namespace}:*"):
        name = key.decode()[len(namespace) + 1:]
        kind = redis.type(key).decode()
        if kind == "list":
            value = redis.lrange(key, 0, -1)
        elif kind == "hash":
            value = redis.hgetall(key)
        elif kind == "set":
            value = redis.smembers(key)
        elif kind == "zset":
            value = set(redis.zrange(key, 0, -1)) if name == "__heartbeats__" else redis.zrange(key, 0, -1, withscores=True)
        else:
            value = redis.get(key)
        out[name] = (kind, value)
    if not heartbeats:
        out.pop("__heartbeats__", None)
    return out


def _messages(n, queue=QUEUE):
    """``(redis id, encoded message)`` pairs as Dramatiq's enqueue stores them."""
    out = []
    for i in range(n):
        redis_id = str(uuid.uuid4())
        message = Message(queue_name=queue, actor_name="mirror", args=(i,), kwargs={}, options={
            "redis_message_id": redis_id, "usertask_id": 1000 + i})
        out.append((redis_id, message.encode()))
    return out


def test_enqueue_lua_stores_what_dispatch_enqueue_stores(twins, redis):
    theirs, ours = twins
    batch = _messages(3)
    for redis_id, data in batch:
        theirs.do_enqueue(QUEUE, redis_id, data)
    fast_broker._ENQUEUE(redis, ("ours",), [QUEUE, len(batch), *[x for pair in batch for x in pair]])
    # Dispatch also records the sender as a live worker; the enqueue script of a web process does not.
    assert _state(redis, "ours", heartbeats=False) == _state(redis, "theirs", heartbeats=False)
    assert _state(redis, "ours", heartbeats=False)[QUEUE][1] == [r.encode() for r, _ in batch]


@pytest.mark.parametrize("count", [1, 2, 5])
def test_fetch_lua_fetches_what_dispatch_fetch_fetches(twins, redis, count):
    theirs, ours = twins
    batch = _messages(3)
    for ns in ("theirs", "ours"):
        for redis_id, data in batch:
            redis.hset(f"{ns}:{QUEUE}.msgs", redis_id, data)
            redis.rpush(f"{ns}:{QUEUE}", redis_id)
    expected = theirs.do_fetch(QUEUE, count)
    args = (QUEUE, ours.broker_id, 1, count, "mirror-flag:", "mirror-claim:", 60, "usertask_id", "usertask_parent")
    reply = fast_consumer._FETCH(redis, ("ours",), args)
    got = [d or None for d in reply[0].split(b"\0")] if reply else []
    assert got == expected
    assert _state(redis, "ours") == _state(redis, "theirs")
    redis.delete(*redis.keys("mirror-claim:*"))


def test_ack_lua_acknowledges_as_dispatch_ack_does(twins, redis):
    theirs, ours = twins
    batch = _messages(4)
    for ns in ("theirs", "ours"):
        for redis_id, data in batch:
            redis.hset(f"{ns}:{QUEUE}.msgs", redis_id, data)
            redis.rpush(f"{ns}:{QUEUE}", redis_id)
    theirs.do_fetch(QUEUE, 4)
    ours.fetch(QUEUE, 4)
    for redis_id, _ in batch[:3]:
        theirs.do_ack(QUEUE, redis_id)
    _ACK_MANY(redis, ("ours",), (ours.broker_id, 1, QUEUE, *[r for r, _ in batch[:3]]))
    assert _state(redis, "ours") == _state(redis, "theirs")
    # An id that is not the worker's: both leave the message alone.
    theirs.do_ack(QUEUE, "not-mine")
    _ACK_MANY(redis, ("ours",), (ours.broker_id, 1, QUEUE, "not-mine"))
    assert _state(redis, "ours") == _state(redis, "theirs")


def test_a_maintenance_fetch_does_dispatchs_maintenance(twins, redis):
    """The fetch usertasks' consumer makes when it rolls for maintenance calls dispatch.lua with
    its argument list as the script's header documents it: the messages of a dead worker go back
    to the queue, as Dramatiq's own maintenance puts them."""
    theirs, ours = twins
    theirs.maintenance_chance = 1_000_000  # Dramatiq's roll always says yes
    batch = _messages(2)
    for ns in ("theirs", "ours"):
        for redis_id, data in batch:
            redis.hset(f"{ns}:{QUEUE}.msgs", redis_id, data)
            redis.sadd(f"{ns}:__acks__.dead-worker.{QUEUE}", redis_id)
        redis.zadd(f"{ns}:__heartbeats__", {"dead-worker": 1})
    expected = theirs.do_fetch(QUEUE, 5)
    got = ours.fetch(QUEUE, 5, maintenance=True)
    assert sorted(got) == sorted(expected) and len(got) == 2
    assert _state(redis, "ours") == _state(redis, "theirs")


def test_dispatch_still_documents_the_arguments_usertasks_passes():
    """``RedisBroker.fetch(maintenance=True)`` builds dispatch.lua's argument list itself."""
    from pathlib import Path

    import dramatiq.brokers.redis as module

    header = (Path(module.__file__).parent / "redis" / "dispatch.lua").read_text()
    assert ("args=[command, timestamp, queue_name, worker_id, heartbeat_timeout, dead_message_ttl, do_maintenance, "
            "max_unpack_size, ...]") in " ".join(header.split())


def test_scripts_are_lua_files():
    for script in (fast_broker._ENQUEUE, fast_consumer._FETCH, _ACK_MANY):
        assert isinstance(script, Script) and script.text.lstrip().startswith("-- usertasks:")
