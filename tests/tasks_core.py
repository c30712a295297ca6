"""Actors for the core test suite (lifecycle, sending, progress)."""

import time

from usertasks import user_task

from .tasks import mark, r


@user_task(name="Report {course} ({fmt}, {lang})", max_retries=0)
def named(task, course, fmt="csv", *, lang="en"):
    mark(f"named:{course}")


@user_task(name="Item {0} of {1}", max_retries=0)
def indexed(task, a, b):
    pass


@user_task(name="{0}/{1}/{2} {extra}", max_retries=0)
def varargs(task, first, *rest, **options):
    pass


@user_task(name="Broken {missing}", max_retries=0)
def bad_name(task, label=""):
    pass


@user_task(name="Fixed total", total_steps=10, max_retries=0)
def fixed_total(task, label=""):
    task.step(3)


@user_task(name="Callable total", total_steps=lambda n, label="": n * 2, max_retries=0)
def callable_total(task, n, label=""):
    task.step(n)


@user_task(name="Step then sleep {label}", max_retries=0)
def step_then_sleep(task, steps, pause, label=""):
    """Make a step, record when it was made (Redis, wall clock), sleep; repeat."""
    task.set_total_steps(steps)
    for i in range(steps):
        task.step(message=f"step {i + 1}")
        r().rpush(f"side-effect:steps:{label}", repr(time.time()))
        time.sleep(pause)


@user_task(name="Always fails {label}", max_retries=2, min_backoff=10, max_backoff=20)
def always_fails(task, label=""):
    n = r().incr(f"flaky:always:{label}")
    raise KeyError(f"attempt {n}")


@user_task(name="Untracked A", max_retries=0)
def untracked_a(task, label=""):
    mark(f"untracked_a:{label}")
    mark(f"untracked_a_ctx:{task.tracked}")


@user_task(name="Untracked B", max_retries=0)
def untracked_b(task, label=""):
    mark(f"untracked_b:{label}")


@user_task(name="Reads its row {label}", max_retries=0)
def reads_status(task, label=""):
    row = task.status
    r().set(f"side-effect:status:{label}", f"{row.pk}|{row.name}|{row.state}|{task.attempt}")
