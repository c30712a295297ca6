"""The Celery app of the upstream suite, made current before the test modules import ``shared_task``."""

from celery import Celery

app = Celery("user_tasks_upstream_suite")
app.config_from_object("django.conf:settings")
app.set_current()
app.set_default()
