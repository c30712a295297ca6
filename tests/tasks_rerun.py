"""Actors of the re-run tests (stored input, ``sensitive``, ``status.rerun()``)."""

import time

from usertasks import user_task

from .tasks import mark, r


@user_task(name="Fails once {label}", max_retries=0)
def fails_once(task, label, size=1, *, fmt="csv"):
    """Fails on its first run for ``label``, succeeds on any later one (a re-run)."""
    if r().incr(f"side-effect:runs:{label}") == 1:
        raise ValueError(f"first run of {label} fails")
    task.add_artifact("Output", text=f"{label}:{size}:{fmt}")
    mark(f"rerun-ok:{label}")


@user_task(name="Sign in as {username}", sensitive=("password",), max_retries=0)
def sign_in(task, username, password=None, **extra):
    mark(f"signin:{username}")


@user_task(name="Unique {label}", unique=True, max_retries=0)
def unique_job(task, label, steps=0, delay=0.0):
    task.set_total_steps(steps)
    for _ in range(steps):
        time.sleep(delay)
        task.step()
    mark(f"unique:{label}")
