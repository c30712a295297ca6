"""Settings for the test suite.

The database is SQLite (a file, so a worker process can share it) unless ``DATABASE_URL`` names
another.  The broker is a private Redis started on a free port the first time these settings
are imported; its URL is exported in ``USERTASKS_TEST_REDIS_URL`` so worker processes started
by the tests use the same one.
"""

import atexit
import os
import tempfile

import dj_database_url

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Under pytest-xdist every worker (gw0, gw1, ...) gets its own Redis, temporary directory
# (MEDIA_ROOT, SQLite files) and test database: the values the controller exported are not
# inherited.  Processes started by a test inherit the worker's values (USERTASKS_TEST_OWNER).
_xdist_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _xdist_worker and os.environ.get("USERTASKS_TEST_OWNER") != _xdist_worker:
    os.environ.pop("USERTASKS_TEST_REDIS_URL", None)
    os.environ.pop("USERTASKS_TEST_TMP", None)
    os.environ["USERTASKS_TEST_OWNER"] = _xdist_worker

if not os.environ.get("USERTASKS_TEST_REDIS_URL"):
    from usertasks.devredis import RedisServer

    _redis = RedisServer().start()
    atexit.register(_redis.stop)
    os.environ["USERTASKS_TEST_REDIS_URL"] = _redis.url
REDIS_URL = os.environ["USERTASKS_TEST_REDIS_URL"]

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"

if not os.environ.get("USERTASKS_TEST_TMP"):
    import shutil

    os.environ["USERTASKS_TEST_TMP"] = tempfile.mkdtemp(prefix="usertasks-tests-")
    atexit.register(shutil.rmtree, os.environ["USERTASKS_TEST_TMP"], ignore_errors=True)
_tmp = os.environ["USERTASKS_TEST_TMP"]

if os.environ.get("DATABASE_URL", "").startswith("mysql"):
    # MySQL/MariaDB through PyMySQL when mysqlclient is not installed (pip install PyMySQL).
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        import pymysql

        pymysql.install_as_MySQLdb()
if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"])}
    # USERTASKS_TEST_DB_SUFFIX lets several suites share one server without colliding.
    DATABASES["default"]["TEST"] = {"NAME": "test_usertasks" + os.environ.get("USERTASKS_TEST_DB_SUFFIX", "")}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(_tmp, "main.sqlite3"),
            # USERTASKS_TEST_SQLITE_TIMEOUT: a short busy timeout for worker processes of fault tests.
            "OPTIONS": {"timeout": float(os.environ.get("USERTASKS_TEST_SQLITE_TIMEOUT", 30))},
            "TEST": {"NAME": os.path.join(_tmp, "test.sqlite3")},
        }
    }
    import django

    if os.environ.get("USERTASKS_TEST_SQLITE_WAL") == "1" and django.VERSION >= (5, 1):
        # The configuration docs/deployment.md recommends (bench/fanout.py uses it; the two
        # options need Django >= 5.1).
        DATABASES["default"]["OPTIONS"].update(
            transaction_mode="IMMEDIATE", init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
        )
if os.environ.get("USERTASKS_TEST_DB_NAME"):
    # A worker process started by the tests: talk to the test database directly.
    DATABASES["default"]["NAME"] = os.environ["USERTASKS_TEST_DB_NAME"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_dramatiq",
    "usertasks",
    "demo",
    "tests",
    # The django-user-tasks compatibility layer (tests/compat/).
    "rest_framework",
    "user_tasks",
]

AUTHENTICATION_BACKENDS = [
    "rules.permissions.ObjectPermissionBackend",
    "django.contrib.auth.backends.ModelBackend",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "tests.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "/static/"
MEDIA_ROOT = os.path.join(_tmp, "media")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
if os.environ.get("USERTASKS_TEST_EMAIL_DIR"):
    # A worker process started by a test that reads the emails it sends.
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = os.environ["USERTASKS_TEST_EMAIL_DIR"]

DRAMATIQ_BROKER = {
    "BROKER": "usertasks.redis.RedisBroker",
    # maintenance_chance: every broker command may requeue the messages of dead workers, so a
    # killed worker's messages come back within heartbeat_timeout (the default is 0.1 %;
    # bench/fanout.py runs with the default).
    "OPTIONS": {"url": REDIS_URL, "heartbeat_timeout": 4000, "dead_message_ttl": 600000,
                "maintenance_chance": int(os.environ.get("USERTASKS_TEST_MAINTENANCE_CHANCE", 1000000))},
    "MIDDLEWARE": [
        "dramatiq.middleware.AgeLimit",
        "dramatiq.middleware.TimeLimit",
        "dramatiq.middleware.Callbacks",
        "dramatiq.middleware.Pipelines",
        "dramatiq.middleware.Retries",
        "django_dramatiq.middleware.DbConnectionsMiddleware",
    ],
}
if os.environ.get("USERTASKS_TEST_SHUTDOWN_NOTIFICATIONS"):  # worker processes that interrupt tasks on stop
    from dramatiq.middleware import ShutdownNotifications

    DRAMATIQ_BROKER["MIDDLEWARE"] = DRAMATIQ_BROKER["MIDDLEWARE"] + [ShutdownNotifications(notify_shutdown=True)]
if os.environ.get("USERTASKS_TEST_BROKER") == "dramatiq-redis":  # worker processes of tests/test_plain_broker.py
    DRAMATIQ_BROKER = dict(DRAMATIQ_BROKER, BROKER="dramatiq.brokers.redis.RedisBroker")
if os.environ.get("USERTASKS_TEST_BROKER") == "rabbitmq":  # worker processes of tests/test_rabbitmq.py
    DRAMATIQ_BROKER = dict(DRAMATIQ_BROKER, BROKER="dramatiq.brokers.rabbitmq.RabbitmqBroker", OPTIONS={
        "url": os.environ.get("USERTASKS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")})
# Django's task API (tests/backends/): django.tasks on Django 6.0+, else the django-tasks backport.
try:
    import django.tasks  # noqa: F401
except ImportError:
    INSTALLED_APPS.append("django_tasks")
TASKS = {
    "default": {"BACKEND": "usertasks.backends.UserTasksBackend", "QUEUES": ["default", "django-tasks"]},
    "retrying": {
        "BACKEND": "usertasks.backends.UserTasksBackend",
        "OPTIONS": {"MAX_RETRIES": 2, "MIN_BACKOFF": 10, "MAX_BACKOFF": 50, "UNIQUE": ["tests.tasks_django.unique_sleep"]},
    },
}
DRAMATIQ_TASKS_DATABASE = "default"
DRAMATIQ_AUTODISCOVER_MODULES = ["tasks"]

USERTASKS = {"BASE_URL": "http://testserver", "PROGRESS_INTERVAL": 0.1}
if os.environ.get("USERTASKS_TEST_NOTIFY") == "0":  # benchmarks: no emails
    USERTASKS["NOTIFY"] = False
if os.environ.get("USERTASKS_TEST_PROGRESS_INTERVAL"):  # worker processes of tests/test_status_read.py
    USERTASKS["PROGRESS_INTERVAL"] = float(os.environ["USERTASKS_TEST_PROGRESS_INTERVAL"])
if os.environ.get("USERTASKS_TEST_NOTIFIERS"):  # worker processes of tests/test_notify.py
    USERTASKS["NOTIFIERS"] = os.environ["USERTASKS_TEST_NOTIFIERS"].split(",")
if os.environ.get("USERTASKS_TEST_NOTIFY_DELIVERY") == "0":  # ... whose deliverer is off
    USERTASKS["NOTIFY_DELIVERY"] = False
if os.environ.get("USERTASKS_TEST_WEBHOOK_URL"):
    USERTASKS.update(WEBHOOK_URL=os.environ["USERTASKS_TEST_WEBHOOK_URL"], WEBHOOK_SECRET="tests-webhook-secret")
if os.environ.get("USERTASKS_TEST_FANOUT_CHILD_EVENTS") == "1":  # worker processes of tests/test_fanout.py
    USERTASKS["FANOUT_CHILD_EVENTS"] = True
if os.environ.get("USERTASKS_TEST_WAKE_CONSUMERS") == "0":  # bench/pickup.py: Dramatiq's polling only
    USERTASKS["WAKE_CONSUMERS"] = False
# The workers' upkeep (reaper, purge) would act on the rows of other tests: off, except in the
# worker processes of tests/middleware/test_upkeep.py, which set these.
USERTASKS["REAP_EVERY"] = float(os.environ["USERTASKS_TEST_REAP_EVERY"]) if os.environ.get("USERTASKS_TEST_REAP_EVERY") else None
USERTASKS["PURGE_EVERY"] = float(os.environ["USERTASKS_TEST_PURGE_EVERY"]) if os.environ.get("USERTASKS_TEST_PURGE_EVERY") else None
if os.environ.get("USERTASKS_TEST_UPKEEP_LOCK_TTL"):
    USERTASKS["UPKEEP_LOCK_TTL"] = float(os.environ["USERTASKS_TEST_UPKEEP_LOCK_TTL"])
if os.environ.get("USERTASKS_TEST_PROMETHEUS") == "1":  # worker processes of tests/test_metrics.py
    DRAMATIQ_BROKER["MIDDLEWARE"] = DRAMATIQ_BROKER["MIDDLEWARE"] + ["dramatiq.middleware.prometheus.Prometheus"]
if os.environ.get("USERTASKS_TEST_BROKER") == "stub-bare":  # tests/test_maintenance_actors.py
    DRAMATIQ_BROKER = {"BROKER": "dramatiq.brokers.stub.StubBroker", "OPTIONS": {}, "MIDDLEWARE": []}
if os.environ.get("USERTASKS_TEST_ABORT_REDIS_URL"):  # fault tests: abort flags on their own Redis
    USERTASKS["REDIS_URL"] = os.environ["USERTASKS_TEST_ABORT_REDIS_URL"]
if os.environ.get("USERTASKS_TEST_SETTINGS"):  # worker processes of fault tests: a JSON object of USERTASKS keys
    import json

    USERTASKS.update(json.loads(os.environ["USERTASKS_TEST_SETTINGS"]))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"usertasks": {"handlers": ["console"], "level": "WARNING"}},
}
for _name in filter(None, os.environ.get("USERTASKS_TEST_DEBUG_LOGGERS", "").split(",")):
    # Worker processes whose log a test reads: these loggers at DEBUG, e.g. "usertasks.wakeup".
    LOGGING["loggers"][_name] = {"handlers": ["console"], "level": "DEBUG", "propagate": False}
