"""Django settings for the Dramatiq variants of the benchmarks.

Everything is chosen by environment variables (``bench/common.py`` sets them):

``BENCH_VARIANT``      ``tracked`` (usertasks), ``raw``, ``orm`` or ``admin`` (django_dramatiq's
                       ``AdminMiddleware``); only ``tracked`` installs the ``usertasks`` app.
``BENCH_DB``           ``sqlite`` (``BENCH_DB_NAME`` is the file) or ``postgres``
                       (``BENCH_DB_NAME`` is the database on ``BENCH_PG_HOST``:``BENCH_PG_PORT``).
``BENCH_CONN_MAX_AGE`` Django's ``CONN_MAX_AGE`` (default 0, Django's own default).
``BENCH_REDIS_URL``    the broker.
``BENCH_WRITE_LINGER`` ``USERTASKS["WRITE_LINGER"]`` (default: the app's own), for experiments.
``BENCH_NOTIFY``       ``0``: ``USERTASKS["NOTIFY"] = False`` (the "notifications off" variant);
                       by default the app's defaults hold: an email on every outcome, through
                       the outbox, built in full and dropped (``benchapp.mail``).
"""

import os

VARIANT = os.environ.get("BENCH_VARIANT", "tracked")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CONN_MAX_AGE = int(os.environ.get("BENCH_CONN_MAX_AGE", "0"))

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if os.environ.get("BENCH_DB", "sqlite") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("BENCH_DB_NAME", "usertasks_bench"),
            "USER": os.environ.get("BENCH_PG_USER", "postgres"),
            "HOST": os.environ.get("BENCH_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("BENCH_PG_PORT", "5432"),
            "CONN_MAX_AGE": CONN_MAX_AGE,
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("BENCH_DB_NAME", "/tmp/usertasks-bench.sqlite3"),
            # Rollback journal (Django's default).  Transactions start IMMEDIATE and the busy
            # timeout is long, so that 8 writing threads wait for the lock instead of failing
            # with "database is locked" (a deferred transaction that reads first cannot wait).
            "OPTIONS": {"timeout": 60, "transaction_mode": "IMMEDIATE"},
            "CONN_MAX_AGE": CONN_MAX_AGE,
        }
    }
    if os.environ.get("BENCH_SQLITE_WAL") == "1":
        # bench/run.py --sqlite-wal: SQLite as docs/deployment.md configures it.
        DATABASES["default"]["OPTIONS"]["init_command"] = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_dramatiq",
    "benchapp",
]
if VARIANT == "tracked":
    INSTALLED_APPS.append("usertasks")

_middleware = [
    "dramatiq.middleware.AgeLimit",
    "dramatiq.middleware.TimeLimit",
    "dramatiq.middleware.Callbacks",
    "dramatiq.middleware.Pipelines",
    "dramatiq.middleware.Retries",
    "django_dramatiq.middleware.DbConnectionsMiddleware",
]
if VARIANT == "admin":
    _middleware.append("django_dramatiq.middleware.AdminMiddleware")

DRAMATIQ_BROKER = {
    # usertasks' broker (the one its docs give users) for tracked runs; Dramatiq's own for the others.
    "BROKER": "usertasks.redis.RedisBroker" if VARIANT == "tracked" else "dramatiq.brokers.redis.RedisBroker",
    "OPTIONS": {"url": REDIS_URL},
    "MIDDLEWARE": _middleware,
}
ROOT_URLCONF = "bench_urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
DRAMATIQ_TASKS_DATABASE = "default"
DRAMATIQ_AUTODISCOVER_MODULES = []

# The defaults a user gets (an email for every finished task), with BASE_URL set as the
# docs ask; each email is built in full (MIME bytes) by benchapp.mail, then dropped.
USERTASKS = {"BASE_URL": "https://bench.example.com"}
EMAIL_BACKEND = "benchapp.mail.DiscardingBackend"
if os.environ.get("BENCH_NOTIFY") == "0":
    USERTASKS["NOTIFY"] = False
if os.environ.get("BENCH_WRITE_LINGER"):  # experiments: bench/run.py passes the environment on
    USERTASKS["WRITE_LINGER"] = float(os.environ["BENCH_WRITE_LINGER"])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
