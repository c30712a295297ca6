"""Actors of the outcome tests: children whose steps show on their container, and outcome
counters (``task.count``) summed into containers.  Side effects and gates are in Redis."""

import time

from usertasks import user_task

from .tasks import mark, r


def wait_gate(label, timeout=60):
    """Block until the test opens the gate ``label`` (a key in Redis)."""
    deadline = time.monotonic() + timeout
    while not r().get(f"side-effect:gate:{label}"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {label} never opened")
        time.sleep(0.01)


@user_task(name="Steps parent {label}", max_retries=0)
def steps_parent(task, n, steps, label=""):
    task.fan_out(steps_child, [{"i": i, "steps": steps, "label": label} for i in range(n)])


@user_task(name="Steps child {i}", max_retries=0)
def steps_child(task, i, steps, label=""):
    """Half its steps, then wait at the gate, then the rest."""
    task.set_total_steps(steps)
    for _ in range(steps // 2):
        task.step()
    mark(f"half:{label}")
    wait_gate(label)
    for _ in range(steps - steps // 2):
        task.step()


def outcome(i, j):
    """What happened to recipient ``j`` of batch ``i``: 1 in 25 fails, 1 in 10 is skipped."""
    k = i * 50 + j
    return "failed" if k % 25 == 0 else "skipped" if k % 10 == 9 else "sent"


@user_task(name="Bulk email {label}", max_retries=0)
def bulk_email(task, batches, per_batch, label="", own=0):
    task.fan_out(email_batch, [{"i": i, "per_batch": per_batch, "label": label} for i in range(batches)])
    if own:
        task.count(skipped=own)  # the body's own counts add to its children's


@user_task(name="Email batch {i}", max_retries=0)
def email_batch(task, i, per_batch, label=""):
    """One recipient at a time, as a mailer loop would count them."""
    for j in range(per_batch):
        task.count(**{outcome(i, j): 1})


@user_task(name="Counted retry {label}", max_retries=1, min_backoff=10, max_backoff=20)
def counted_retry(task, label=""):
    """Counts 3 sent on its first attempt, which fails half-way through its 4 steps; 2 sent and
    1 skipped on its second, which takes its 4 steps."""
    task.set_total_steps(4)
    if r().incr(f"flaky:counted:{label}") == 1:
        task.step(2)
        task.count(sent=3)
        raise RuntimeError("first attempt fails")
    task.step(4)
    task.count(sent=2, skipped=1)


@user_task(name="Counted parent {label}", max_retries=0)
def counted_parent(task, n, label=""):
    task.fan_out(counted_retry, [{"label": f"{label}:{i}"} for i in range(n)])


@user_task(name="Counting {label}", max_retries=0)
def counting_task(task, label="", steps=200):
    """A plain task that counts while it runs (its counters are stored with its progress)."""
    task.set_total_steps(steps)
    for i in range(steps):
        task.count(succeeded=1, **({"failed": 1} if i % 50 == 0 else {}))
        task.step()
        if i == steps // 2:
            mark(f"counting:{label}")
            wait_gate(label)
