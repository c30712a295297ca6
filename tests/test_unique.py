"""Dedupe (``unique=True``): concurrent identical requests get one task, enforced by the
database; the key is released when the task is final, also after a crash (the reaper)."""

import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from usertasks.models import UserTaskStatus
from usertasks.states import State

from . import tasks_fanout as t
from .helpers import wait_final, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 24


def race(fn, n=THREADS):
    """Run ``fn`` in ``n`` threads released at the same instant; returns results or raises."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def run(i):
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    if errors:
        raise errors[0]
    return results


def test_racing_identical_requests_get_one_task(start_worker, user, other_user, redis):
    rows = race(lambda i: t.unique_sleep.send_for(user, "k1", delay=1.0))
    assert len({r.pk for r in rows}) == 1
    assert UserTaskStatus.objects.count() == 1
    status = UserTaskStatus.objects.get()
    assert status.unique_key and status.state == State.PENDING
    # Another user, or other arguments, are other tasks.
    bobs = t.unique_sleep.send_for(other_user, "k1", delay=1.0)
    assert bobs.pk != status.pk
    assert t.unique_sleep.send_for(user, "k2", delay=1.0).pk != status.pk

    start_worker(processes=2, threads=4)
    wait_final(status, timeout=60)
    wait_final(bobs, timeout=60)  # its side effect is counted below too
    assert status.state == State.SUCCEEDED and status.unique_key is None
    assert redis.get("side-effect:unique:k1") == b"2"  # one for alice, one for bob
    # Final: the key is free again, so an identical request starts a new task.
    again = t.unique_sleep.send_for(user, "k1", delay=0)
    assert again.pk != status.pk
    wait_final(again, timeout=60)


def test_racing_requests_while_the_task_runs(start_worker, user, redis):
    start_worker(processes=2, threads=4)
    first = t.unique_sleep.send_for(user, "run", delay=3.0)
    wait_for(lambda: UserTaskStatus.objects.get(pk=first.pk).state == State.IN_PROGRESS, timeout=30, message="start")
    rows = race(lambda i: t.unique_sleep.send_for(user, "run", delay=3.0))
    assert {r.pk for r in rows} == {first.pk}
    wait_final(first, timeout=60)
    assert redis.get("side-effect:unique:run") == b"1"


def test_key_released_after_a_crash_by_the_reaper(start_worker, user, redis):
    from usertasks.conf import app_settings
    from usertasks.reaper import reap

    w = start_worker(processes=1, threads=2)
    status = t.unique_sleep.send_for(user, "crash", delay=30)
    wait_for(lambda: UserTaskStatus.objects.get(pk=status.pk).state == State.IN_PROGRESS, timeout=30, message="start")
    w.kill()
    redis.flushdb()  # the broker lost the message too
    assert t.unique_sleep.send_for(user, "crash", delay=30).pk == status.pk  # still latched on
    reap(now=timezone.now() + timedelta(seconds=app_settings.STALE_AFTER + 60))
    status.refresh_from_db()
    assert status.state == State.FAILED and status.unique_key is None
    assert t.unique_sleep.send_for(user, "crash", delay=30).pk != status.pk


def test_callable_key(user, other_user, transactional_db):
    from usertasks import user_task

    @user_task(unique=lambda user, course: f"course:{course}", actor_name="unique_by_course")
    def per_course(task, course):
        pass

    a = per_course.send_for(user, "c1")
    assert per_course.send_for(other_user, "c1").pk == a.pk  # the key ignores the user
    assert per_course.send_for(user, "c2").pk != a.pk
    assert a.unique_key == "unique_by_course:course:c1"


def test_long_keys_are_hashed(user, transactional_db):
    a = t.unique_sleep.send_for(user, "x" * 1000)
    b = t.unique_sleep.send_for(user, "x" * 999 + "y")
    assert a.pk != b.pk and len(a.unique_key) <= 255
    assert t.unique_sleep.send_for(user, "x" * 1000).pk == a.pk
