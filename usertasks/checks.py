"""System checks.  Ids are stable; each is documented in ``docs/settings.md``."""

from typing import Any

from django.conf import settings
from django.core import checks

from .conf import DEFAULTS


@checks.register("usertasks")
def check_broker(app_configs=None, **kwargs):
    from .broker import configured_broker
    from .middleware import problems

    broker = configured_broker()
    if broker is None:
        return [
            checks.Error(
                "No Dramatiq broker is configured.",
                hint="Add 'django_dramatiq' before 'usertasks' in INSTALLED_APPS and set DRAMATIQ_BROKER.",
                id="usertasks.E001",
            )
        ]
    missing, misplaced = problems(broker)
    if missing:
        return [
            checks.Error(
                f"The Dramatiq broker {type(broker).__name__} lacks usertasks' middleware (UserTaskTracking, UserTaskAbort).",
                hint="Let the usertasks app install it (keep 'usertasks' in INSTALLED_APPS after "
                "'django_dramatiq'), or call usertasks.middleware.install(broker).",
                id="usertasks.E002",
            )
        ]
    if misplaced:
        return [
            checks.Error(
                "usertasks' tracking middleware comes after Retries, so it cannot see retry decisions.",
                hint="Put usertasks.middleware.UserTaskTracking before dramatiq.middleware.Retries.",
                id="usertasks.E003",
            )
        ]
    return _fast_path(broker)


def _fast_path(broker):
    """``usertasks.W003``: a Redis broker without usertasks' fast path."""
    from dramatiq.brokers.redis import RedisBroker as DramatiqRedisBroker

    from .redis import RedisBroker

    if not isinstance(broker, DramatiqRedisBroker) or isinstance(broker, RedisBroker):
        return []
    return [
        checks.Warning(
            f"The Dramatiq broker is {type(broker).__module__}.{type(broker).__qualname__}: usertasks' fast path is "
            "off (one round trip per message sent and per task claimed, acknowledgements waiting for the commit on "
            "the worker threads, idle workers polling).",
            hint="Set DRAMATIQ_BROKER['BROKER'] = 'usertasks.redis.RedisBroker' (same options, same queues); see "
            "docs/architecture.md.",
            id="usertasks.W003",
        )
    ]


@checks.register("usertasks")
def check_settings(app_configs=None, **kwargs):
    errors: list[checks.CheckMessage] = []
    value = getattr(settings, "USERTASKS", None)
    if value is None:
        return errors
    if not isinstance(value, dict):
        return [checks.Error("USERTASKS must be a dict.", id="usertasks.E004")]
    unknown = sorted(set(value) - set(DEFAULTS))
    if unknown:
        errors.append(
            checks.Error(
                f"Unknown USERTASKS key(s): {', '.join(unknown)}.",
                hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.",
                id="usertasks.E005",
            )
        )
    interval = value.get("PROGRESS_INTERVAL", DEFAULTS["PROGRESS_INTERVAL"])
    if not isinstance(interval, (int, float)) or not 0 < interval <= 0.5:
        errors.append(
            checks.Error(
                "USERTASKS['PROGRESS_INTERVAL'] must be a number of seconds in (0, 0.5].",
                hint="Stored progress is promised to be at most 0.5 s behind.",
                id="usertasks.E006",
            )
        )
    linger = value.get("WRITE_LINGER", DEFAULTS["WRITE_LINGER"])
    if isinstance(linger, bool) or not isinstance(linger, (int, float)) or not 0 <= linger <= 1:
        errors.append(
            checks.Error(
                "USERTASKS['WRITE_LINGER'] must be a number of seconds in [0, 1].",
                hint="It delays acknowledgements by as much; 0.02 (the default) is plenty, 0 turns it off.",
                id="usertasks.E008",
            )
        )
    storage = value.get("ARTIFACT_STORAGE", DEFAULTS["ARTIFACT_STORAGE"])
    if isinstance(storage, str) and "." not in storage:
        aliases = getattr(settings, "STORAGES", {}) or {}
        if storage not in aliases and storage != "default":
            errors.append(
                checks.Error(
                    f"USERTASKS['ARTIFACT_STORAGE'] names {storage!r}, which is not in STORAGES.",
                    id="usertasks.E007",
                )
            )
    return errors


@checks.register("usertasks")
def check_base_url(app_configs=None, **kwargs):
    """Notification emails need an absolute link to the status page."""
    from .conf import app_settings

    if app_settings.NOTIFY is False or app_settings.BASE_URL:
        return []
    return [
        checks.Warning(
            "USERTASKS['BASE_URL'] is not set, so task emails cannot link to the status page.",
            hint="Set USERTASKS = {'BASE_URL': 'https://your.site'} (or NOTIFY = False to send no emails).",
            id="usertasks.W002",
        )
    ]


@checks.register("usertasks", checks.Tags.database)
def check_sqlite(app_configs=None, databases=None, **kwargs):
    """Warn when SQLite is used without a busy timeout (workers would see 'database is locked')."""
    warnings = []
    for alias in databases or ():
        conf: dict[str, Any] = settings.DATABASES.get(alias) or {}
        if "sqlite" in conf.get("ENGINE", "") and not (conf.get("OPTIONS") or {}).get("timeout"):
            warnings.append(
                checks.Warning(
                    f"SQLite database {alias!r} has no OPTIONS['timeout'].",
                    hint="Set OPTIONS = {'timeout': 20, 'transaction_mode': 'IMMEDIATE'} and WAL mode; see docs/deployment.md.",
                    id="usertasks.W001",
                )
            )
    return warnings
