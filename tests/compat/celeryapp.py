"""The Celery app of the compatibility tests: broker and results on the test Redis (database 3,
apart from Dramatiq's), message protocol from ``USERTASKS_TEST_CELERY_PROTOCOL`` (default 2).

Worker: ``celery -A tests.compat.celeryapp worker --pool threads`` with the test settings.
"""

import os
from urllib.parse import urlsplit, urlunsplit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from celery import Celery  # noqa: E402
from django.conf import settings  # noqa: E402


def _url(db):
    parts = urlsplit(settings.REDIS_URL)
    return urlunsplit(parts._replace(path=f"/{db}"))


app = Celery("tests_compat", set_as_current=True)
app.conf.update(
    broker_url=_url(3),
    result_backend=_url(3),
    task_protocol=int(os.environ.get("USERTASKS_TEST_CELERY_PROTOCOL", "2")),
    broker_connection_retry_on_startup=True,
    task_default_queue="compat",
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    task_acks_late=False,
    result_expires=600,
    timezone="UTC",
)
app.set_default()

from . import celerytasks  # noqa: E402,F401  (registers the test tasks)
