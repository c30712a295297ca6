"""usertasks' own actors (the purge, the reaper) import and run on a broker with any middleware
list: Dramatiq refuses an actor option, like ``time_limit``, that none of its middleware declares."""

import os
import subprocess
import sys

import pytest

from .helpers import ROOT

SCRIPT = """
import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django_dramatiq", "usertasks"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}},
    DRAMATIQ_BROKER={"BROKER": "dramatiq.brokers.stub.StubBroker", "OPTIONS": {}, "MIDDLEWARE": %(middleware)r},
    USE_TZ=True,
)
django.setup()
from django.core.management import call_command

call_command("migrate", verbosity=0)
import dramatiq
from dramatiq import Worker

from usertasks.purge import purge_expired_tasks
from usertasks.reaper import reap_lost_tasks

broker = dramatiq.get_broker()
worker = Worker(broker, worker_threads=1)
worker.start()
for actor in (purge_expired_tasks, reap_lost_tasks):
    actor.send()
broker.join(purge_expired_tasks.queue_name, fail_fast=True, timeout=60_000)
worker.join()
worker.stop()
print("ran:", sorted(a for a in broker.actors if a.startswith("usertasks_")))
"""


@pytest.mark.parametrize("middleware", [[], ["dramatiq.middleware.TimeLimit", "dramatiq.middleware.Retries"]])
def test_purge_and_reaper_actors_run_on_a_broker_with_any_middleware(middleware, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT % {"middleware": middleware}], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ran: ['usertasks_purge', 'usertasks_reap']" in done.stdout
