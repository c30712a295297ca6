"""On real worker processes: a container's progress counts the steps of its running children,
and outcome counters (``task.count``) are summed exactly into containers."""

import time

import pytest
from django.urls import reverse

from usertasks.models import UserTaskStatus
from usertasks.states import State

from .. import tasks_outcomes as t
from ..helpers import wait_final, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def steps(status):
    status.refresh_from_db()
    return status.completed_steps, status.total_steps


def open_gate(redis, label):
    redis.set(f"side-effect:gate:{label}", 1)


def test_running_childrens_steps_show_on_the_container(start_worker, user, redis, client):
    # 10 children of 10 steps; 8 worker threads: 8 run to their 5th step and wait, 2 wait
    # for a thread.  The container counts the steps of the running ones, not only ended ones.
    # (One process: two would share the 10 messages as their prefetch goes, not 8 to 8 threads.)
    start_worker(processes=1, threads=8)
    status = t.steps_parent.send_for(user, 10, 10, label="s10")
    wait_for(lambda: int(redis.get("side-effect:half:s10") or 0) == 8, timeout=60, message="8 children at half")
    reached = time.monotonic()
    # 8 running children at 5 of 10 steps; 2 not started yet, one step each.
    wait_for(lambda: steps(status) == (40, 82), timeout=10, message=f"(40, 82), got {steps(status)}")
    # Coalesced progress is never more than PROGRESS_INTERVAL (+ one write) behind: well under
    # a second, whatever the load of the machine running this test.
    assert time.monotonic() - reached < 2.0
    assert status.state == State.IN_PROGRESS and status.children_done == 0
    client.force_login(user)
    data = client.get(reverse("usertasks:api-detail", args=[status.uuid])).json()
    assert (data["completed_steps"], data["total_steps"], data["percent"]) == (40, 82, 48.8)
    assert "40 of 82 steps" in client.get(status.get_absolute_url()).content.decode()
    open_gate(redis, "s10")
    wait_final(status, timeout=60)
    assert status.state == State.SUCCEEDED
    # Exact at the end: 10 children of 10 steps.
    assert steps(status) == (100, 100) and status.percent == 100.0
    children = UserTaskStatus.objects.filter(parent=status)
    assert set(children.values_list("completed_steps", "total_steps")) == {(10, 10)}


def expected_emails(batches, per_batch):
    total = {"sent": 0, "failed": 0, "skipped": 0}
    for i in range(batches):
        for j in range(per_batch):
            total[t.outcome(i, j)] += 1
    return total


def test_bulk_email_counts_are_exact_on_the_container(start_worker, user, redis, client):
    # 100,000 recipients: 2,000 batches of 50, each recipient counted on its own, on 2
    # processes of 8 threads whose writers add to the one container concurrently.
    start_worker(processes=2, threads=8)
    status = t.bulk_email.send_for(user, 2000, 50, label="bulk", own=7)
    wait_final(status, timeout=300)
    assert status.state == State.SUCCEEDED, status.error
    expected = expected_emails(2000, 50)
    assert sum(expected.values()) == 100_000
    assert status.counts == {**expected, "skipped": expected["skipped"] + 7}
    # Each child's own counters, and their sum.
    children = list(UserTaskStatus.objects.filter(parent=status).values_list("counts", flat=True))
    assert len(children) == 2000
    assert {k: sum(c.get(k, 0) for c in children) for k in expected} == expected
    assert sum(sum(c.values()) for c in children) == 100_000
    client.force_login(user)
    data = client.get(reverse("usertasks:api-detail", args=[status.uuid])).json()
    assert list(data["counts"]) == ["failed", "skipped", "sent"]
    assert data["counts"]["sent"] == expected["sent"]
    html = client.get(status.get_absolute_url()).content.decode()
    assert f"<dt>Sent</dt><dd>{expected['sent']}</dd>" in html


def test_counts_are_kept_across_retries(start_worker, user, redis):
    start_worker(processes=1, threads=4)
    status = t.counted_parent.send_for(user, 6, label="retry")
    wait_final(status, timeout=60)
    assert status.state == State.SUCCEEDED
    assert status.children_retried == 6
    # 3 sent by each first attempt (which failed), 2 sent and 1 skipped by each second one.
    assert status.counts == {"sent": 30, "skipped": 6}
    # The steps of a failed attempt were given back before the retry reported its own: 6
    # children of 4 steps, not counted twice.
    assert (status.completed_steps, status.total_steps) == (24, 24)
    for counts in UserTaskStatus.objects.filter(parent=status).values_list("counts", flat=True):
        assert counts == {"sent": 5, "skipped": 1}


def test_a_plain_tasks_counts_are_stored_with_its_progress(start_worker, user, redis):
    start_worker(processes=1, threads=2)
    status = t.counting_task.send_for(user, label="plain")
    wait_for(lambda: redis.get("side-effect:counting:plain"), timeout=30, message="the task half-way")

    def counted():
        status.refresh_from_db()
        return status.counts == {"succeeded": 101, "failed": 3}

    wait_for(counted, timeout=10, message=f"the counts while it runs, got {status.counts}")
    open_gate(redis, "plain")
    wait_final(status)
    assert status.state == State.SUCCEEDED
    assert status.counts == {"succeeded": 200, "failed": 4}


def test_a_real_pipeline_and_fan_out_show_their_stages_and_failures(start_worker, user, redis, client):
    from usertasks import pipeline

    from .. import tasks_fanout as tf

    start_worker(processes=1, threads=4)
    pipe = pipeline(user, [tf.stage.message("a"), tf.stage_fail.message("b"), tf.stage.message("c")])
    fan = tf.fan_parent.send_for(user, 12, label="fo", fail_at=[2, 9])
    wait_final(pipe, timeout=60)
    wait_final(fan, timeout=60)
    client.force_login(user)
    data = client.get(reverse("usertasks:api-detail", args=[pipe.uuid])).json()
    assert [(s["name"], s["state"]) for s in data["stages"]] == [
        ("Stage a", "Succeeded"), ("Failing stage b", "Failed"), ("Stage c", "Canceled"),
    ]
    assert data["stages"][1]["error"] == "stage b broke"
    assert data["failed_children"]["count"] == 1
    html = client.get(pipe.get_absolute_url()).content.decode()
    assert "Failing stage b</a> <span class=\"ut-state ut-state-failed\">Failed</span>" in html
    data = client.get(reverse("usertasks:api-detail", args=[fan.uuid])).json()
    assert data["failed_children"]["count"] == 2
    assert sorted((c["name"], c["error"]) for c in data["failed_children"]["shown"]) == [
        ("Child 2", "child 2 refused"), ("Child 9", "child 9 refused"),
    ]
    assert all(client.get(c["url"]).status_code == 200 for c in data["failed_children"]["shown"])
