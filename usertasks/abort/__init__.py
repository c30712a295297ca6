"""Abort flag stores: how a cancel reaches a running task.

``USERTASKS["ABORT_BACKEND"]`` picks one: ``"redis"``, ``"database"``, a dotted path to an
:class:`~usertasks.abort.base.AbortBackend` subclass, or ``None`` (the default): Redis when the
broker is a ``RedisBroker`` or ``USERTASKS["REDIS_URL"]`` is set, the database otherwise.
"""

import logging
import os
import threading
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from .base import AGAIN, FIRST, SKIP, AbortBackend

logger = logging.getLogger("usertasks.abort")

__all__ = ["AGAIN", "FIRST", "SKIP", "AbortBackend", "clear_flags", "get_backend", "set_flag"]

ALIASES = {
    "redis": "usertasks.abort.redis.RedisAbortBackend",
    "database": "usertasks.abort.database.DatabaseAbortBackend",
}

_cache: dict[
    int, tuple[dict[str, Any], Any, Any, AbortBackend]
] = {}  # pid -> (settings dict of the database of the status rows, its NAME, broker, backend)
_lock = threading.Lock()


def backend_path():
    from ..broker import configured_broker
    from ..conf import app_settings

    name = app_settings.ABORT_BACKEND
    if name:
        return ALIASES.get(name, name)
    if app_settings.REDIS_URL:
        return ALIASES["redis"]
    from dramatiq.brokers.redis import RedisBroker

    if isinstance(configured_broker(), RedisBroker):
        return ALIASES["redis"]
    return ALIASES["database"]


def get_backend():
    """The abort backend of this process.  Made once per process and kept while the database
    and the broker stay the same; a change of the ``USERTASKS`` or database settings
    (``setting_changed``, as in tests) makes the next call build a new one.  Called for every
    fetched batch and message, so the common case reads three values it already holds."""
    import dramatiq.broker

    entry = _cache.get(os.getpid())
    if entry is not None:
        settings_dict, database, broker, backend = entry
        if settings_dict.get("NAME") == database and dramatiq.broker.global_broker is broker:
            return backend
    return _build_backend()


def _build_backend():
    from django.db import connections, router
    from django.utils.module_loading import import_string

    from ..broker import configured_broker
    from ..models import UserTaskStatus

    with _lock:
        broker = configured_broker()
        # The connection's settings dict is the one a test runner renames to its test database.
        settings_dict = connections[router.db_for_write(UserTaskStatus)].settings_dict
        database = settings_dict.get("NAME")
        entry = _cache.get(os.getpid())
        if entry is not None and entry[1] == database and entry[2] is broker and entry[0] is settings_dict:
            return entry[3]
        backend = import_string(backend_path())()
        _cache.clear()
        _cache[os.getpid()] = (settings_dict, database, broker, backend)
        return backend


@receiver(setting_changed, dispatch_uid="usertasks.abort.settings")
def _forget_backend(setting, **kwargs):
    if setting in ("USERTASKS", "DATABASES", "DATABASE_ROUTERS"):
        _cache.clear()


def set_flag(status_id):
    get_backend().set(status_id)


def clear_flags(status_ids, *, quiet=True):
    """Remove flags of final tasks; errors are logged (a left-over flag is harmless and the
    reaper removes it later) unless ``quiet`` is false."""
    ids = [i for i in status_ids if i is not None]
    if not ids:
        return
    try:
        get_backend().clear(ids)
    except Exception as exc:
        if not quiet:
            raise
        logger.info("usertasks: could not clear abort flags %s: %s", ids, exc)
