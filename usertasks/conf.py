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
    # Notification channels: dotted paths of channel classes (docs/notifications.md).  Each
    # finished task that notifies gets one outbox row per channel, delivered by the workers.
    "NOTIFIERS": ["usertasks.notify.email.EmailChannel"],
    # Whether worker processes run a delivery thread for the outbox (False: deliver with the
    # usertasks_notify command, e.g. from a process of its own).
    "NOTIFY_DELIVERY": True,
    # Outbox rows a deliverer takes per batch.
    "NOTIFY_BATCH_SIZE": 100,
    # Seconds an idle deliverer sleeps between two looks at the outbox (it is woken at once
    # by a commit of its own process that recorded notifications).
    "NOTIFY_POLL_INTERVAL": 2.0,
    # Seconds before the first retry of a failed delivery; each further retry waits twice as
    # long, up to an hour.
    "NOTIFY_RETRY_DELAY": 30.0,
    # While tasks run in its worker process, the deliverer rests this many times as long as its
    # last batch took (so it takes at most 1 / (1 + NOTIFY_PACE) of the process's time from
    # the tasks, which share one interpreter lock with it); 0: no rest.
    "NOTIFY_PACE": 3.0,
    # Delivery attempts per task and channel before giving up.
    "NOTIFY_MAX_ATTEMPTS": 8,
    # Seconds a deliverer holds the rows of its batch; a deliverer that died releases them
    # after this long.
    "NOTIFY_LEASE": 300.0,
    # Webhook channel (usertasks.notify.webhook.WebhookChannel): the URL it POSTs to, the
    # secret of the HMAC-SHA256 signature, and its connect and read timeouts in seconds.
    "WEBHOOK_URL": None,
    "WEBHOOK_SECRET": None,
    "WEBHOOK_CONNECT_TIMEOUT": 5.0,
    "WEBHOOK_READ_TIMEOUT": 10.0,
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
    # Seconds between two runs of the reaper by the workers (one worker at a time); None: off
    # (then run ``usertasks_reap`` from a scheduler).
    "REAP_EVERY": 60.0,
    # Seconds between two runs of the purge (tasks older than MAX_AGE) by the workers (one
    # worker at a time); None: off (then run ``usertasks_purge`` from a scheduler).
    "PURGE_EVERY": 3600.0,
    # Seconds the lease of the worker that runs the upkeep lives without a renewal: a worker
    # that dies holding it is replaced at most this long after.
    "UPKEEP_LOCK_TTL": 30.0,
    # Bearer token that may read the ``metrics`` view (besides superusers); None: superusers only.
    "METRICS_TOKEN": None,
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
        if name == "MAX_AGE" and name not in user:
            # django-user-tasks' age, for sites that switch: the workers purge by default, and
            # must not delete sooner than the site asked for.
            value = getattr(settings, "USER_TASKS_MAX_AGE", None) or value
        if name == "MAX_AGE" and not isinstance(value, timedelta):
            value = timedelta(seconds=value)
        return value

    def keys(self) -> KeysView[str]:
        return DEFAULTS.keys()


app_settings = AppSettings()
