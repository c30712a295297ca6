"""``usertasks_purge`` and ``usertasks_reap`` are declared and run on a broker with any middleware
list: here a StubBroker without any (no ``TimeLimit``, no ``Retries``), in a process of its own."""

import os
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from usertasks.models import UserTaskStatus
from usertasks.states import State

from .helpers import ROOT

pytestmark = pytest.mark.django_db(transaction=True)

SCRIPT = textwrap.dedent("""
    import django
    django.setup()
    import dramatiq
    broker = dramatiq.get_broker()
    assert type(broker).__name__ == "StubBroker" and "time_limit" not in broker.actor_options, broker
    from usertasks.purge import purge_expired_tasks
    from usertasks.reaper import reap_lost_tasks
    assert purge_expired_tasks.broker is broker and reap_lost_tasks.broker is broker
    purge_expired_tasks.send()
    reap_lost_tasks.send()
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    broker.join("default", fail_fast=True)
    worker.join()
    worker.stop()
    print("options", sorted(purge_expired_tasks.options), sorted(reap_lost_tasks.options))
""")


def test_the_maintenance_actors_run_on_a_broker_without_middleware(user):
    old = timezone.now() - timedelta(days=40)
    expired = UserTaskStatus.objects.create(user=user, task_id="old", task_class="x", name="old",
                                            state=State.SUCCEEDED, finished=old)
    lost = UserTaskStatus.objects.create(user=user, task_id="lost", task_class="x", name="lost",
                                         state=State.IN_PROGRESS, worker="host:1:t:abc", heartbeat=old,
                                         started=old, attempts=1)
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", USERTASKS_TEST_BROKER="stub-bare",
               USERTASKS_TEST_DB_NAME=connection.settings_dict["NAME"])
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "options [] []" in result.stdout
    assert not UserTaskStatus.objects.filter(pk=expired.pk).exists()
    assert UserTaskStatus.objects.get(pk=lost.pk).state == State.FAILED
