"""User tasks used by the test suite.  Side effects go to Redis so tests can see whether a
body ran, in whichever process it ran."""

import os
import time

import redis
from django.core.files.base import ContentFile

from usertasks import current_task, user_task

_redis = None


def r():
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ["USERTASKS_TEST_REDIS_URL"])
    return _redis


def mark(key):
    r().incr(f"side-effect:{key}")


@user_task(name="No-op {label}")
def noop(task, label=""):
    mark(f"noop:{label}")


@user_task(name="Count to {n}", max_retries=0)
def count(task, n, label=""):
    task.set_total_steps(n)
    for i in range(n):
        task.step(message=f"item {i + 1} of {n}")
    mark(f"count:{label}")


@user_task(name="Slow steps {label}", max_retries=0)
def slow_steps(task, n, delay, label=""):
    task.set_total_steps(n)
    for i in range(n):
        time.sleep(delay)
        task.step(message=f"step {i + 1}")
    mark(f"slow:{label}")


@user_task(name="Fail {label}", max_retries=0)
def fail(task, label=""):
    task.set_message("about to fail")
    raise ValueError(f"Bad input: {label}")


@user_task(name="Flaky {label}", max_retries=2, min_backoff=10, max_backoff=50)
def flaky(task, failures, label=""):
    n = r().incr(f"flaky:{label}")
    if n <= failures:
        raise RuntimeError(f"attempt {n} failed")
    mark(f"flaky:{label}")


@user_task(name="Artifacts {label}", max_retries=0)
def artifacts(task, label=""):
    task.add_artifact("Report", file=ContentFile(b"a,b\n1,2\n", name="report.csv"))
    task.add_artifact("Link", url="https://example.com/out")
    task.add_artifact("Summary", text="<b>done</b>")


@user_task(name="Deep {label}", max_retries=0)
def deep(task, label=""):
    _helper()


def _helper():
    ctx = current_task()
    ctx.set_total_steps(2)
    ctx.step(2, message="deep")


@user_task(name="Notify on failure {label}", notify={"Failed", "Canceled"}, max_retries=0)
def notify_set(task, label=""):
    mark(f"notify_set:{label}")
