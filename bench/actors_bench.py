"""Actors of the Dramatiq benchmark variants (loaded by the worker processes).

All of them are no-ops apart from what the variant measures:

* ``raw_noop``      plain Dramatiq actor, no database at all;
* ``orm_write``     plain Dramatiq actor doing one ``INSERT`` through the ORM (autocommit);
* ``tracked_noop``  a ``@user_task`` (only when the ``usertasks`` app is installed);
* ``*_sleep``       the same with 5 ms (``BENCH_SLEEP_MS``) of ``time.sleep``, for the
                    one-process vs two-processes comparison;
* ``*_status``, ``*_step100``, ``*_artifact``: the cases of ``bench/likeforlike.py``: a task
                    that reads ``task.status``, one that steps 100 times, one that adds a text
                    artifact (their raw counterparts: a no-op, a loop of 100 calls, a no-op).

With ``BENCH_PROFILE=<dir>`` the worker process also profiles itself (see ``bench/profile.py``).
"""

import os
import time

import dramatiq
from django.conf import settings

SLEEP = float(os.environ.get("BENCH_SLEEP_MS", "5")) / 1000.0

if os.environ.get("BENCH_SWITCH_INTERVAL"):
    # Experiment knob: the GIL switch interval of the worker process (Python's default: 0.005 s).
    import sys

    sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))


@dramatiq.actor(max_retries=0)
def raw_noop():
    pass


@dramatiq.actor(max_retries=0)
def raw_sleep():
    time.sleep(SLEEP)


@dramatiq.actor(max_retries=0)
def raw_step100():
    counter = _Counter()
    for _ in range(100):
        counter.step()


class _Counter:
    def __init__(self):
        self.n = 0

    def step(self, n=1):
        self.n += n


@dramatiq.actor(max_retries=0)
def orm_write():
    from benchapp.models import Row

    Row.objects.create(n=1)


if "usertasks" in settings.INSTALLED_APPS:
    from usertasks import user_task

    @user_task(name="No-op", max_retries=0)
    def tracked_noop(task):
        pass

    @user_task(name="Sleep", max_retries=0)
    def tracked_sleep(task):
        time.sleep(SLEEP)

    @user_task(name="Reads its status", max_retries=0)
    def tracked_status(task):
        if task.status.attempts < 1:
            raise AssertionError("task.status shows no attempt")

    @user_task(name="Steps", max_retries=0)
    def tracked_step100(task):
        task.set_total_steps(100)
        for _ in range(100):
            task.step()

    @user_task(name="Artifact", max_retries=0)
    def tracked_artifact(task):
        task.add_artifact("Result", text="hello")


if os.environ.get("BENCH_PROFILE"):
    import profiling_hooks

    profiling_hooks.install(dramatiq.get_broker(), os.environ["BENCH_PROFILE"])
