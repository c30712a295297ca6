"""Upkeep without cron: real worker processes run the reaper and the purge, one at a time, under a
lease in Redis that a killed holder loses when it expires."""

import re
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.helpers import wait_for
from usertasks.abort.redis import key_namespace
from usertasks.models import EventKind, UserTaskStatus
from usertasks.states import State

pytestmark = pytest.mark.django_db(transaction=True)

TTL = 3.0
UPKEEP = {
    "USERTASKS_TEST_REAP_EVERY": "1",
    "USERTASKS_TEST_UPKEEP_LOCK_TTL": str(TTL),
    "USERTASKS_TEST_DEBUG_LOGGERS": "usertasks.upkeep",
}
FOLLOWS = re.compile(r"usertasks upkeep: (\S+) follows (\S+)")


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _worker_of(workers, token):
    """The Worker (its main process) whose worker process holds ``token`` (``host:pid:nonce``)."""
    pid = int(token.split(":")[1])
    with open(f"/proc/{pid}/stat") as f:
        parent = int(f.read().rsplit(")", 1)[1].split()[1])
    return next(w for w in workers if w.proc.pid == parent)


def test_one_worker_leads_and_another_takes_over_from_a_killed_leader(start_worker, redis, capfd):
    prefix = key_namespace() + "upkeep:"
    lock, reap = prefix + "lock", prefix + "reap"
    workers = [start_worker(threads=1, extra_env=UPKEEP), start_worker(threads=1, extra_env=UPKEEP)]
    leader = _text(wait_for(lambda: redis.get(lock), message="a leader"))
    log = []

    def follower():
        log.append(capfd.readouterr().err)
        return next((f for f, led in FOLLOWS.findall("".join(log)) if led == leader and f != leader), None)

    # The other worker is up and tries to lead: it says it follows the leader.
    other = wait_for(follower, timeout=30, message="the other worker to follow")

    # While both live, the leader alone runs the reaper, once a second (REAP_EVERY).
    starts, bys = [], set()

    def three_more_runs():
        started, by = redis.hmget(reap, "started", "by")
        if started is not None and (not starts or float(started) != starts[-1]):
            starts.append(float(started))
            bys.add(_text(by))
        return len(starts) >= 4

    wait_for(three_more_runs, timeout=30, interval=0.02, message="runs of the reaper")
    assert bys == {leader}
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(gap >= 0.99 for gap in gaps), gaps  # never two runs in one period
    assert int(redis.hget(reap, "runs")) >= 3
    assert f"{other} runs reap" not in "".join(log) + capfd.readouterr().err

    # The leader dies holding its lease: the other takes over once the lease expires.
    victim = _worker_of(workers, leader)
    victim.kill()
    killed = time.monotonic()
    wait_for(lambda: _text(redis.get(lock)) == other, timeout=TTL + 5, interval=0.02, message="the takeover")
    assert time.monotonic() - killed <= TTL + 0.5
    wait_for(lambda: _text(redis.hget(reap, "by")) == other, timeout=10, message="a run by the new leader")


def test_the_upkeep_reaps_and_purges(start_worker, redis, user):
    old = timezone.now() - timedelta(days=40)
    lost = UserTaskStatus.objects.create(
        user=user, task_id="lost", task_class="x", name="lost", state=State.IN_PROGRESS,
        worker="host:1:t:abc", heartbeat=old, started=old, attempts=1,
    )
    expired = UserTaskStatus.objects.create(
        user=user, task_id="done", task_class="x", name="done", state=State.SUCCEEDED, created=old, finished=old,
    )
    kept = UserTaskStatus.objects.create(
        user=user, task_id="recent", task_class="x", name="recent", state=State.SUCCEEDED,
        finished=timezone.now(),
    )
    start_worker(threads=1, extra_env={"USERTASKS_TEST_REAP_EVERY": "3600", "USERTASKS_TEST_PURGE_EVERY": "3600"})
    wait_for(lambda: not UserTaskStatus.objects.filter(pk=expired.pk).exists(), message="the purge")
    wait_for(lambda: UserTaskStatus.objects.get(pk=lost.pk).state == State.FAILED, message="the reaper")
    assert UserTaskStatus.objects.get(pk=lost.pk).events.get().kind == EventKind.WORKER_LOST
    assert UserTaskStatus.objects.filter(pk=kept.pk).exists()
    prefix = key_namespace() + "upkeep:"
    for job in ("reap", "purge"):
        # (a job's run is recorded once it has returned, a moment after its effect shows)
        wait_for(lambda j=job: redis.hget(prefix + j, "runs") == b"1", message=f"the {job} to be recorded")
        assert redis.hget(prefix + job, "error") == b""


def test_no_upkeep_when_both_jobs_are_off(start_worker, redis, user):
    """Both jobs None (the test settings' default): no worker takes the lease."""
    from tests import tasks

    start_worker(threads=1)
    from tests.helpers import wait_final

    assert wait_final(tasks.noop.send_for(user, label="x")).state == State.SUCCEEDED  # the worker is up
    assert not list(redis.scan_iter(key_namespace() + "upkeep:*"))


def test_a_new_leader_goes_on_with_the_schedule_and_reruns_an_interrupted_job(start_worker, redis, user):
    """The reaper ran (and finished) a second ago: not due for an hour.  The purge was started a
    second ago by a worker that is gone and never finished it: due at once."""
    old = timezone.now() - timedelta(days=40)
    lost = UserTaskStatus.objects.create(
        user=user, task_id="lost", task_class="x", name="lost", state=State.IN_PROGRESS,
        worker="host:1:t:abc", heartbeat=old, started=old, attempts=1,
    )
    expired = UserTaskStatus.objects.create(
        user=user, task_id="done", task_class="x", name="done", state=State.SUCCEEDED, finished=old,
    )
    prefix = key_namespace() + "upkeep:"
    redis.flushdb()
    seconds, micros = redis.time()
    now = seconds + micros / 1e6
    redis.hset(prefix + "reap", mapping={"started": now - 1, "finished": now - 0.5, "by": "gone:1:x", "runs": 7})
    redis.hset(prefix + "purge", mapping={"started": now - 1, "by": "gone:1:x"})
    start_worker(threads=1, extra_env={"USERTASKS_TEST_REAP_EVERY": "3600", "USERTASKS_TEST_PURGE_EVERY": "3600"})
    wait_for(lambda: redis.hget(prefix + "purge", "runs") == b"1", message="the interrupted purge")
    assert not UserTaskStatus.objects.filter(pk=expired.pk).exists()
    assert redis.hget(prefix + "reap", "runs") == b"7"  # (looked at first, in the same round)
    assert UserTaskStatus.objects.get(pk=lost.pk).state == State.IN_PROGRESS
