"""Actors of the usertasks app itself, found by django-dramatiq's task autodiscovery
(``manage.py rundramatiq`` loads every installed app's ``tasks`` module)."""

from .backends.runner import run_django_task  # noqa: F401  (Django's task API: "usertasks.django_task")
from .purge import purge_expired_tasks  # noqa: F401  (the periodic purge: "usertasks_purge")
from .reaper import reap_lost_tasks  # noqa: F401  (the periodic reaper: "usertasks_reap")
