"""A site that runs the real django-user-tasks 4.0 (in its own virtualenv), before the switch."""

import os

import dj_database_url

SECRET_KEY = "live-site-test-only"
USE_TZ = True
TIME_ZONE = "UTC"
DATABASES = {"default": dj_database_url.parse(os.environ["LIVE_SITE_DATABASE_URL"])}
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "rest_framework",
    "user_tasks",
    "clientapp",
]
MEDIA_ROOT = os.environ["LIVE_SITE_MEDIA_ROOT"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
CELERY_ALWAYS_EAGER = True
