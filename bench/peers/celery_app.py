"""The Celery application of the baseline (``celery -A celery_app worker``)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings_peers")

import django  # noqa: E402
from celery import Celery  # noqa: E402

app = Celery("peers")
app.config_from_object("django.conf:settings", namespace="CELERY")
django.setup()
app.autodiscover_tasks(["peertasks"])
