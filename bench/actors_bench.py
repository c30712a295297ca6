"""Actors of the Dramatiq benchmark variants (loaded by the worker processes).

All of them are no-ops apart from what the variant measures:

* ``raw_noop``      plain Dramatiq actor, no database at all;
* ``orm_write``     plain Dramatiq actor doing one ``INSERT`` through the ORM (autocommit);
* ``tracked_noop``  a ``@user_task`` (only when the ``usertasks`` app is installed);
* ``*_sleep``       the same with 5 ms (``BENCH_SLEEP_MS``) of ``time.sleep``, for the
                    one-process vs two-processes comparison.

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


if os.environ.get("BENCH_PROFILE"):
    import profiling_hooks

    profiling_hooks.install(dramatiq.get_broker(), os.environ["BENCH_PROFILE"])
