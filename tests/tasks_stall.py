"""Actors for the stall and bad-input tests (tests/test_stall.py, tests/test_bad_input.py)."""

import time

from usertasks import user_task

from .tasks import mark


@user_task(name="Slow {label}", max_retries=0)
def slow(task, label="", seconds=1.0):
    """Starts (its start is stored before the body runs on), works ``seconds``, ends."""
    task.set_total_steps(10)
    assert task.status is not None  # reading it waits until the start is stored
    mark(f"started:{label}")
    for _ in range(10):
        time.sleep(seconds / 10)
        task.step()
    mark(f"done:{label}")


@user_task(name="Quick {label}", max_retries=0)
def quick(task, label=""):
    task.step()
    mark(f"done:{label}")


@user_task(name="Bad input {case}", max_retries=0)
def bad_input(task, case=""):
    """Each ``case`` hands the task context a value the database could not store."""
    mark(f"started:{case}")
    if case == "negative-step":
        task.step(5)
        task.step(-7)
    elif case == "huge-total":
        task.set_total_steps(2**63)
    elif case == "negative-total":
        task.set_total_steps(-1)
    elif case == "past-the-largest-count":
        task.step(2**63 - 1)
        task.step(1)
    elif case == "fractional-step":
        task.step(1.5)
    elif case == "oversized-message":
        task.set_total_steps(2)
        task.step(message="x" * 1_000_000)
        task.step(message="é" * 3000)
    elif case == "unstorable-message":
        task.step(message="nul\x00 and lone \ud800 surrogate")
    elif case == "unstorable-error":
        raise RuntimeError("nul\x00 in the error, and a lone \udfff surrogate")
    elif case == "refused-end":
        task.step(3)
        raise RuntimeError("refuse-me")
    mark(f"done:{case}")
