"""Actors for the cancel, abort, time limit, worker death and fault tests."""

import time

from usertasks import user_task

from .tasks import mark, r


def _steps(task, label, n, delay):
    """Steps every ``delay`` seconds; marks ``started`` at once and ``done`` at the end."""
    mark(f"started:{label}")
    task.set_total_steps(n)
    for i in range(n):
        time.sleep(delay)
        task.step()
    mark(f"done:{label}")


@user_task(name="Wait {label}", max_retries=0)
def wait_steps(task, label="", n=400, delay=0.01):
    _steps(task, label, n, delay)


@user_task(name="Wait and retry {label}", max_retries=3, min_backoff=200, max_backoff=200)
def wait_steps_retrying(task, label="", n=400, delay=0.01):
    """``wait_steps`` with retries left (a worker stopping with ShutdownNotifications requeues it)."""
    _steps(task, label, n, delay)


@user_task(name="Side effect {label}", max_retries=0)
def side_effect(task, label=""):
    mark(f"ran:{label}")


@user_task(name="Fail then work {label}", max_retries=3, min_backoff=3000, max_backoff=3000)
def fail_then_work(task, label=""):
    """Fails its first attempt; retried 3 s later."""
    n = r().incr(f"side-effect:attempt:{label}")
    if n == 1:
        raise RuntimeError("first attempt fails")
    mark(f"ran:{label}")


@user_task(name="Stuck {label}", max_retries=0, abort_grace=0.5)
def stuck(task, label=""):
    """Ignores cancels: a busy loop with a broad ``except Exception``, never a step()."""
    mark(f"started:{label}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            sum(range(1000))
        except Exception:  # a broad handler must not swallow the forced abort
            pass
    mark(f"done:{label}")


@user_task(name="Too slow {label}", max_retries=0, time_limit=1000)
def too_slow(task, label=""):
    mark(f"started:{label}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.01)
    mark(f"done:{label}")


@user_task(name="Check abort {label}", max_retries=0)
def check_abort_loop(task, label=""):
    """Polls ``abort_requested`` and then ``check_abort()`` instead of stepping."""
    mark(f"started:{label}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if task.abort_requested:
            mark(f"saw:{label}")
            task.check_abort()
        time.sleep(0.01)
    mark(f"done:{label}")


#: Queue of the RabbitMQ tests (its own, so nothing else on the local RabbitMQ interferes).
RABBIT_QUEUE = "usertasks_test_rmq"


@user_task(name="Rabbit {label}", max_retries=0, queue_name=RABBIT_QUEUE)
def rabbit_steps(task, label="", n=400, delay=0.01):
    mark(f"started:{label}")
    task.set_total_steps(n)
    for i in range(n):
        time.sleep(delay)
        task.step()
    mark(f"done:{label}")


@user_task(name="Latency probe {label}", max_retries=0)
def latency_probe(task, label="", step_seconds=0.01):
    """Steps every ``step_seconds`` until canceled; stores when it stopped (bench/abort_latency.py)."""
    from usertasks import Aborted

    mark(f"started:{label}")
    try:
        for _ in range(100000):
            time.sleep(step_seconds)
            task.step()
    except Aborted:
        r().set(f"side-effect:stopped:{label}", repr(time.time()))
        raise
