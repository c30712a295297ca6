"""The ``USERTASKS`` settings dict, read at access time.

Every key is documented in ``docs/settings.md``.  Read a value as an attribute of
:data:`app_settings`; nothing is cached, so ``override_settings`` works in tests::

    from usertasks.conf import app_settings
    app_settings.MAX_AGE
"""

from __future__ import annotations

from collections.abc import KeysView
from datetime import timedelta
from typing import Any

from django.conf import settings

DEFAULTS = {
    # Finished tasks older than this (counted from when they finished) are purged.
    "MAX_AGE": timedelta(days=30),
    # Alias in STORAGES (or a dotted path to a Storage class) that holds artifact files.
    "ARTIFACT_STORAGE": "default",
    # Seconds between two progress writes of a running task; the stored progress is never
    # further behind than this plus one write.
    "PROGRESS_INTERVAL": 0.25,
    # Seconds between two heartbeats of a running task.
    "HEARTBEAT_INTERVAL": 10.0,
    # Default for the ``notify`` task option: True (every outcome except a cancel by the
    # requester), False, or a collection of final states, e.g. {"Succeeded", "Failed"}.
    "NOTIFY": True,
    # Default for the ``abort_grace`` task option (seconds from a cancel to a forced stop).
    "ABORT_GRACE": 10.0,
    # Abort flag store: a dotted path, or None to pick Redis when the broker is a RedisBroker
    # and the database otherwise.
    "ABORT_BACKEND": None,
    # Redis URL for the abort flags when the broker is not a RedisBroker.
    "REDIS_URL": None,
    # Prefix of usertasks' Redis keys (abort flags, claims); None derives one from the database.
    "REDIS_KEY_PREFIX": None,
    # Maximum number of status changes written in one transaction.
    "WRITE_BATCH_SIZE": 500,
    # Seconds the writer may hold the final states of runs no thread waits for (their messages'
    # acknowledgements wait for the commit) to commit more of them together; 0: at once.
    "WRITE_LINGER": 0.02,
    # Seconds one batch of the writer may take (connecting included) before its watchdog logs it
    # at ERROR, drops the database connection and retries on a fresh one; also the statement
    # timeout (PostgreSQL) and the read and write timeouts (MySQL) of the writer's connection.
    # None: no watchdog, no such timeouts.
    "WRITE_TIMEOUT": 30.0,
    # Seconds the writer waits for a new database connection (PostgreSQL, MySQL).
    "CONNECT_TIMEOUT": 10,
    # Seconds a Redis command of usertasks' own connections (abort flags, wake-ups, its scripts
    # on the broker's server) may wait for its reply, and for a new connection; where the
    # broker's options set none of their own.
    "REDIS_SOCKET_TIMEOUT": 5.0,
    "REDIS_CONNECT_TIMEOUT": 2.0,
    # PostgreSQL with psycopg 3: run the hot statements (the writer's batches, bulk inserts) as
    # server-side prepared statements, planned once per connection.  False behind a connection
    # pooler that cannot keep them (PgBouncer in transaction mode before 1.21, or with
    # max_prepared_statements = 0); "prepare_threshold": None in the database OPTIONS also
    # turns them off.
    "PREPARED_STATEMENTS": True,
    # Longest message kept on a row (longer ones are cut with an ellipsis).
    "MESSAGE_MAX_LENGTH": 500,
    # Absolute base of links in emails, e.g. "https://lms.example.com".
    "BASE_URL": None,
    # Template the pages extend.
    "BASE_TEMPLATE": "usertasks/base.html",
    # Dotted path of the access policy class.
    "PERMISSIONS": "usertasks.permissions.OwnerOrSuperuser",
    # Seconds a task may stay In Progress without a heartbeat before the reaper fails it.
    "STALE_AFTER": 300.0,
    # Seconds a task may stay Pending past its due time before the reaper checks the broker.
    "PENDING_TIMEOUT": 3600.0,
    # Expiry of presigned artifact links, in seconds.
    "ARTIFACT_URL_EXPIRY": 300,
    # Rows deleted per transaction by the purge.
    "PURGE_BATCH_SIZE": 500,
    # Child rows written per INSERT by ``fan_out()``.
    "FANOUT_BATCH_SIZE": 1000,
    # Whether fan-out children record their start and their success as events (their failures,
    # retries, cancels and requeues always are).
    "FANOUT_CHILD_EVENTS": False,
    # Whether usertasks' sends wake the idle Redis consumers of the queues they push onto (a
    # publish on the queue's wake channel), instead of leaving them to Dramatiq's idle backoff
    # (up to the worker timeout, 1 s by default).
    "WAKE_CONSUMERS": True,
    # Dashboard page size.
    "PAGE_SIZE": 25,
    # Longest life of one server-sent-events stream of a status page, in seconds (the browser
    # reconnects); 0 turns the stream off and the pages poll the JSON API instead.
    "LIVE_STREAM_SECONDS": 55,
}


class AppSettings:
    """Attribute access to ``settings.USERTASKS`` with defaults, evaluated on each access."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown usertasks setting: {name!r}")
        user = getattr(settings, "USERTASKS", None) or {}
        value = user.get(name, DEFAULTS[name])
        if name == "ARTIFACT_STORAGE" and name not in user:
            # Settings of django-user-tasks, for sites that switch (docs/migration.md).
            if "user_task_artifacts" in getattr(settings, "STORAGES", {}):
                value = "user_task_artifacts"
            else:
                value = getattr(settings, "USER_TASKS_ARTIFACT_STORAGE", None) or value
        if name == "MAX_AGE" and not isinstance(value, timedelta):
            value = timedelta(seconds=value)
        return value

    def keys(self) -> KeysView[str]:
        return DEFAULTS.keys()


app_settings = AppSettings()
