"""Abort flags in Redis: one key per canceled task, no expiry, read with one ``MGET``.

Keys are ``<prefix>abort:<id>`` and ``<prefix>claim:<id>``.  The prefix is
``USERTASKS["REDIS_KEY_PREFIX"]``, by default ``usertasks:<hash of the database NAME>:``: ids are
a database's own, so two databases sharing one Redis (a reset development database, staging and
a test run) never see each other's flags or claims.

Claims make cancel and start linearizable without a database round trip on the worker: a
worker's claim checks the flags of the task and of its container and sets the task's claim
marker in one Lua script; ``cancel_pending`` raises the flag and reads the marker in another.
Whichever runs first decides: either the worker sees the flag and skips the message, or the
cancel sees the claim and treats the task as running.
"""

import time

from ..rediscalls import Script, bounded_kwargs
from .base import AbortBackend

#: Prefix of every key when ``REDIS_KEY_PREFIX`` is not set; the database's hash follows.
DEFAULT_PREFIX = "usertasks:"
#: Seconds a claim marker lives at most (it is deleted when a run ends without a final state;
#: it only matters until the run's start is stored, see ``usertasks.cancel``).
CLAIM_TTL = 86400

_CLAIM = Script.load(__file__, "claim.lua")  # one script for one claim and for many
_CANCEL_PENDING = Script.load(__file__, "cancel_pending.lua")


def _client():
    """A Redis client for the flags: ``USERTASKS["REDIS_URL"]`` when set, else the connection
    settings of the broker when it is a ``RedisBroker``.  With bounded waits
    (``usertasks.rediscalls.bounded_kwargs``: ``REDIS_SOCKET_TIMEOUT``, ``REDIS_CONNECT_TIMEOUT``,
    keepalives), so an unreachable Redis cannot hold up the worker's threads."""
    import redis

    from ..broker import configured_broker
    from ..conf import app_settings
    from ..exceptions import ConfigurationError

    url = app_settings.REDIS_URL
    client = redis.Redis.from_url(url) if url else getattr(configured_broker(), "client", None)
    if isinstance(client, redis.Redis):
        source = client.connection_pool
        kwargs = bounded_kwargs(source.connection_kwargs, source.connection_class)
        pool = redis.ConnectionPool(connection_class=source.connection_class, **kwargs)
        return redis.Redis(connection_pool=pool)
    raise ConfigurationError(
        "The Redis abort backend needs a RedisBroker or USERTASKS['REDIS_URL'] "
        "(or set USERTASKS['ABORT_BACKEND'] = 'database')."
    )


def key_namespace():
    """``REDIS_KEY_PREFIX``, or ``usertasks:<8 hex digits>:`` from the NAME of the database that
    holds the status rows (web servers and workers must agree: they share the settings)."""
    import hashlib

    from django.db import connections, router

    from ..conf import app_settings
    from ..models import UserTaskStatus

    if app_settings.REDIS_KEY_PREFIX:
        return app_settings.REDIS_KEY_PREFIX
    db = connections[router.db_for_write(UserTaskStatus)]
    name = f"{db.vendor}:{db.settings_dict.get('NAME')}"
    return f"{DEFAULT_PREFIX}{hashlib.sha1(name.encode()).hexdigest()[:8]}:"


class RedisAbortBackend(AbortBackend):
    poll_interval = 0.05
    atomic_claims = True
    claim_ttl = CLAIM_TTL

    def __init__(self, client=None, key_prefix=None):
        self.client = client or _client()
        key_prefix = key_prefix or key_namespace()
        self.prefix = f"{key_prefix}abort:"
        self.claim_prefix = f"{key_prefix}claim:"

    def claim_key(self, status_id):
        return f"{self.claim_prefix}{status_id}"

    def _claim_args(self, tasks):
        """Keys and arguments of the claim script for ``(status_id, parent_id)`` pairs."""
        keys, counts = [], []
        for status_id, parent_id in tasks:
            flags = [self.key(status_id)] if parent_id is None else [self.key(status_id), self.key(parent_id)]
            keys.extend(flags)
            keys.append(self.claim_key(status_id))
            counts.append(len(flags))
        return keys, [CLAIM_TTL, *counts]

    def claim(self, status_id, parent_id=None):
        # A worker thread's own claim (when its consumer could not claim the message): on a
        # connection of this thread's own (usertasks.rediscalls).
        keys, args = self._claim_args([(status_id, parent_id)])
        return int(_CLAIM(self.client, keys, args)[0])

    def claim_many(self, tasks: list[tuple[int, int | None]]) -> list[int]:
        """:meth:`claim` for many ``(status_id, parent_id)`` pairs in one round trip; returns
        the results in order."""
        if not tasks:
            return []
        keys, args = self._claim_args(tasks)
        return [int(r) for r in _CLAIM(self.client, keys, args)]

    def shares_server(self, client):
        """Whether ``client`` (a broker's) talks to the same Redis server and database as the
        flags."""
        mine, theirs = self.client.connection_pool.connection_kwargs, client.connection_pool.connection_kwargs
        return all(mine.get(k) == theirs.get(k) for k in ("host", "port", "db", "path", "username"))

    def cancel_pending(self, status_id):
        return status_id in self.cancel_pending_many([status_id])

    def cancel_pending_many(self, status_ids):
        ids = list(status_ids)
        found: set[int] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            keys = [k for pk in chunk for k in (self.key(pk), self.claim_key(pk))]
            result = _CANCEL_PENDING(self.client, keys, [repr(time.time())])
            found.update(pk for pk, claimed in zip(chunk, result) if claimed)
        return found

    def claimed(self, status_ids):
        ids = list(status_ids)
        found: set[int] = set()
        for i in range(0, len(ids), 1000):
            chunk = ids[i : i + 1000]
            values = self.client.mget([self.claim_key(pk) for pk in chunk])
            found.update(pk for pk, v in zip(chunk, values) if v is not None)
        return found

    def release(self, status_id, *, clear_flag=False):
        keys = [self.claim_key(status_id)]
        if clear_flag:
            keys.append(self.key(status_id))
        self.client.delete(*keys)

    def key(self, status_id):
        return f"{self.prefix}{status_id}"

    def set(self, status_id):
        self.client.set(self.key(status_id), repr(time.time()))

    def flagged(self, status_ids):
        ids = list(status_ids)
        if not ids:
            return set()
        values = self.client.mget([self.key(i) for i in ids])
        return {i for i, v in zip(ids, values) if v is not None}

    def clear(self, status_ids):
        keys = [k for i in status_ids for k in (self.key(i), self.claim_key(i))]
        if keys:
            self.client.delete(*keys)

    def all_flagged(self):
        found: set[int] = set()
        for key in self.client.scan_iter(match=self.prefix + "*", count=1000):
            key = key.decode() if isinstance(key, bytes) else key
            try:
                found.add(int(key[len(self.prefix) :]))
            except ValueError:
                continue
        return found


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)
