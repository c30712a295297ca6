"""The same site after the switch: usertasks and its compatibility layer, the same database."""

import os

import dj_database_url

from tests.settings import *  # noqa: F403  (the test Redis, broker, templates, ...)

DATABASES = {"default": dj_database_url.parse(os.environ["LIVE_SITE_DATABASE_URL"])}
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
    "clientapp",
]
MEDIA_ROOT = os.environ["LIVE_SITE_MEDIA_ROOT"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
