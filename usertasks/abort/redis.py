"""Abort flags in Redis: one key per canceled task, no expiry, read with one ``MGET``."""

import time

from .base import AbortBackend

#: Key prefix of the flags.
PREFIX = "usertasks:abort:"


def _client():
    """A Redis client for the flags: ``USERTASKS["REDIS_URL"]`` when set, else the connection
    settings of the broker when it is a ``RedisBroker``.  Short socket timeouts, so an
    unreachable Redis cannot hold up the worker's writer thread."""
    import redis

    from ..broker import configured_broker
    from ..conf import app_settings
    from ..exceptions import ConfigurationError

    timeouts = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
    url = app_settings.REDIS_URL
    if url:
        return redis.Redis.from_url(url, **timeouts)
    broker = configured_broker()
    client = getattr(broker, "client", None)
    if isinstance(client, redis.Redis):
        kwargs = dict(client.connection_pool.connection_kwargs)
        kwargs.update(timeouts)
        pool = redis.ConnectionPool(connection_class=client.connection_pool.connection_class, **kwargs)
        return redis.Redis(connection_pool=pool)
    raise ConfigurationError(
        "The Redis abort backend needs a RedisBroker or USERTASKS['REDIS_URL'] "
        "(or set USERTASKS['ABORT_BACKEND'] = 'database')."
    )


class RedisAbortBackend(AbortBackend):
    poll_interval = 0.05

    def __init__(self, client=None, prefix=PREFIX):
        self.client = client or _client()
        self.prefix = prefix

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
        keys = [self.key(i) for i in status_ids]
        if keys:
            self.client.delete(*keys)

    def all_flagged(self):
        found = set()
        for key in self.client.scan_iter(match=self.prefix + "*", count=1000):
            key = key.decode() if isinstance(key, bytes) else key
            try:
                found.add(int(key[len(self.prefix):]))
            except ValueError:
                continue
        return found
