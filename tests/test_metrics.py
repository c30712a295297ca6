"""Prometheus metrics: the ``metrics`` view (test client) and the exposition server of real worker
processes (Dramatiq's ``Prometheus`` middleware, two processes, multiprocess mode)."""

import glob
import os
import socket
import urllib.request

import pytest
from django.test import override_settings
from django.urls import reverse
from prometheus_client import multiprocess
from prometheus_client.parser import text_string_to_metric_families

from usertasks.models import UserTaskStatus
from usertasks.states import State

from . import tasks
from .helpers import wait_final, wait_for

TOKEN = "s3cret-metrics-token"
SETTINGS = {"BASE_URL": "http://testserver", "PROGRESS_INTERVAL": 0.1, "METRICS_TOKEN": TOKEN}


def samples(text):
    """``{(sample name, ((label, value), ...)): value}`` of an exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _row(user, state, n):
    return UserTaskStatus.objects.create(user=user, task_id=f"m-{state}-{n}", task_class="x", name="m", state=state)


# -- the view --------------------------------------------------------------------------------


@pytest.mark.django_db
@override_settings(USERTASKS=SETTINGS)
def test_the_view_counts_tasks_by_state_in_one_query(client, user, django_assert_num_queries):
    for n in range(3):
        _row(user, State.PENDING, n)
    _row(user, State.FAILED, 0)
    with django_assert_num_queries(1):
        response = client.get(reverse("usertasks:metrics"), HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    found = samples(response.content.decode())
    assert found[("usertasks_tasks", (("state", "Pending"),))] == 3
    assert found[("usertasks_tasks", (("state", "Failed"),))] == 1
    for state in ("In Progress", "Retrying", "Succeeded", "Canceled"):
        assert found[("usertasks_tasks", (("state", state),))] == 0


@pytest.mark.django_db
@override_settings(USERTASKS=SETTINGS)
def test_the_view_is_for_superusers_and_the_token(client, user, django_user_model):
    url = reverse("usertasks:metrics")
    assert client.get(url).status_code == 403  # anonymous
    assert client.get(url, HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {TOKEN}x").status_code == 403
    assert client.get(url, HTTP_AUTHORIZATION=f"Basic {TOKEN}").status_code == 403
    assert client.get(url, HTTP_AUTHORIZATION=f"bearer {TOKEN}").status_code == 200
    client.force_login(user)
    assert client.get(url).status_code == 403  # a user who is not a superuser
    client.force_login(django_user_model.objects.create_superuser("root", "r@example.com", "pw"))
    response = client.get(url)
    assert response.status_code == 200 and b"usertasks_tasks{" in response.content
    assert "no-cache" in response["Cache-Control"]
    assert client.post(url).status_code == 405


@pytest.mark.django_db
@override_settings(USERTASKS={"BASE_URL": "http://testserver"})
def test_without_a_token_setting_no_token_is_accepted(client):
    url = reverse("usertasks:metrics")
    assert client.get(url, HTTP_AUTHORIZATION="Bearer ").status_code == 403
    assert client.get(url, HTTP_AUTHORIZATION="Bearer None").status_code == 403


# -- the workers ------------------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


@override_settings(USERTASKS=SETTINGS)
def test_two_worker_processes_expose_their_metrics_together(start_worker, user, client, tmp_path, monkeypatch):
    port = _free_port()
    prom_db = str(tmp_path / "prom")
    os.makedirs(prom_db)
    start_worker(processes=2, threads=1, extra_env={
        "USERTASKS_TEST_PROMETHEUS": "1", "dramatiq_prom_db": prom_db,
        "dramatiq_prom_host": "127.0.0.1", "dramatiq_prom_port": str(port),
    })
    url = f"http://127.0.0.1:{port}/metrics"
    # Dramatiq starts its exposition server once every worker process has booted.
    wait_for(lambda: _scrape(url) is not None, timeout=60, message="the exposition server")

    slow = [tasks.slow_steps.send_for(user, n=2, delay=0.15, label=f"m{i}") for i in range(8)]
    failed = [tasks.fail.send_for(user, label=f"m{i}") for i in range(2)]
    flaky = tasks.flaky.send_for(user, failures=1, label="metrics")  # a retried run, then a success
    for status in slow + failed + [flaky]:
        wait_final(status)
    long = tasks.slow_steps.send_for(user, n=2000, delay=0.05, label="cancel-me")
    wait_for(lambda: UserTaskStatus.objects.get(pk=long.pk).state == State.IN_PROGRESS, message="the long task")
    long.cancel()
    assert wait_final(long).state == State.CANCELED
    assert [s.state for s in slow] == [State.SUCCEEDED] * 8 and flaky.state == State.SUCCEEDED

    def finished(actor, state):
        return ("usertasks_tasks_finished_total", (("actor_name", actor), ("state", state)))

    def scraped():
        found = samples(_scrape(url) or "")
        return found if found.get(finished("slow_steps", "Canceled")) == 1 else None

    found = wait_for(scraped, timeout=10, message="the cancel in the metrics")
    assert found[finished("slow_steps", "Succeeded")] == 8
    assert found[finished("fail", "Failed")] == 2
    assert found[finished("flaky", "Succeeded")] == 1
    assert finished("flaky", "Failed") not in found and finished("flaky", "Retrying") not in found
    duration = ("usertasks_task_duration_seconds_count", (("actor_name", "slow_steps"),))
    assert found[duration] == 9  # every run, canceled included
    assert found[("usertasks_task_duration_seconds_sum", (("actor_name", "slow_steps"),))] >= 8 * 0.3
    assert found[("usertasks_task_duration_seconds_count", (("actor_name", "flaky"),))] == 2  # two runs
    assert found[("usertasks_task_wait_seconds_count", (("actor_name", "flaky"),))] == 2
    assert found[("usertasks_task_wait_seconds_count", (("actor_name", "slow_steps"),))] == 9
    wait_bucket = ("usertasks_task_wait_seconds_bucket", (("actor_name", "fail"), ("le", "+Inf")))
    assert found[wait_bucket] == 2
    # Beside Dramatiq's own metrics, in the same exposition.
    assert any(name == "dramatiq_messages_total" for name, _ in found)

    # Each worker process wrote its own file; the exposition is their sum.
    per_process = []
    for path in glob.glob(os.path.join(prom_db, "counter_*.db")):
        metrics = multiprocess.MultiProcessCollector.merge([path], accumulate=True)
        per_process.append(sum(
            s.value for m in metrics for s in m.samples
            if s.name == "usertasks_tasks_finished_total" and s.labels.get("actor_name") == "slow_steps"
        ))
    assert len([n for n in per_process if n]) == 2, per_process
    assert sum(per_process) == 9

    # A web process that shares the directory serves the same counts in the view.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", prom_db)
    response = client.get(reverse("usertasks:metrics"), HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    viewed = samples(response.content.decode())
    assert viewed[finished("slow_steps", "Succeeded")] == 8
    assert viewed[("usertasks_tasks", (("state", "Canceled"),))] == 1
