"""The Redis abort store: keys of their own per database, and claims made in one round trip."""

import pytest

from usertasks.abort import get_backend
from usertasks.states import State

from .. import tasks_cancel as t
from ..helpers import wait_final

pytestmark = pytest.mark.django_db(transaction=True)


def effect(redis, key):
    return int(redis.get(f"side-effect:{key}") or 0)


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
