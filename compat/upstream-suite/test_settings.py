"""Settings under which django-user-tasks' own test modules run against the compatibility layer.

``run.py`` copies the upstream ``tests/`` directory next to this file and runs pytest there.
The Celery app reads these settings without a namespace, as django-user-tasks' users configured
it (the tests switch ``CELERY_ALWAYS_EAGER`` with ``override_settings``); the message protocol
comes from ``USERTASKS_UPSTREAM_PROTOCOL``.
"""

import os

import dj_database_url

_tmp = os.environ["USERTASKS_UPSTREAM_TMP"]

SECRET_KEY = "upstream-suite-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
# Not UTC: serialized times must carry the offset of the current time zone.
TIME_ZONE = "America/New_York"

if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"])}
    DATABASES["default"]["TEST"] = {"NAME": "test_user_tasks_upstream" + os.environ.get("USERTASKS_TEST_DB_SUFFIX", "")}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(_tmp, "main.sqlite3"),
            "TEST": {"NAME": os.path.join(_tmp, "test.sqlite3")},
        }
    }

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_dramatiq",
    "usertasks",
    "rest_framework",
    "user_tasks",
]
AUTHENTICATION_BACKENDS = [
    "rules.permissions.ObjectPermissionBackend",
    "django.contrib.auth.backends.ModelBackend",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "upstream_urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
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
MEDIA_ROOT = os.path.join(_tmp, "media")
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

REDIS_URL = os.environ["USERTASKS_UPSTREAM_REDIS_URL"]
DRAMATIQ_BROKER = {"BROKER": "usertasks.redis.RedisBroker", "OPTIONS": {"url": REDIS_URL}}

# Celery, configured the way django-user-tasks' users did (old-style names, no namespace).
BROKER_URL = "memory://"
CELERY_RESULT_BACKEND = "cache+memory://"
CELERY_TASK_PROTOCOL = int(os.environ.get("USERTASKS_UPSTREAM_PROTOCOL", "2"))
CELERY_ALWAYS_EAGER = False
CELERY_EAGER_PROPAGATES_EXCEPTIONS = False
CELERY_IGNORE_RESULT = True
