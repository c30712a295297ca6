"""Actors of the fan-out, pipeline, dedupe and purge tests.  Side effects go to Redis."""

import time

import dramatiq
from django.core.files.base import ContentFile

from usertasks import user_task

from .tasks import mark, r


@user_task(name="Fan out {n} ({label})", max_retries=0)
def fan_parent(task, n, label="", policy="allow_failures", fail_at=(), delay=0.0, linger=0.0, child="plain"):
    children = {"plain": fan_child, "flaky": fan_flaky_child}[child]
    task.fan_out(
        children,
        [{"i": i, "label": label, "fail": i in fail_at, "delay": delay} for i in range(n)],
        policy=policy,
        on_complete=fan_done.message(label),
    )
    if linger:
        time.sleep(linger)  # the children all end before the body does
    mark(f"fanparent:{label}")


@user_task(name="Child {i}", max_retries=0)
def fan_child(task, i, label="", fail=False, delay=0.0):
    if delay:
        task.set_total_steps(10)
        for _ in range(10):
            time.sleep(delay / 10)
            task.step()
    if fail:
        raise ValueError(f"child {i} refused")
    mark(f"fanchild:{label}")


@user_task(name="Flaky child {i}", max_retries=1, min_backoff=10, max_backoff=20)
def fan_flaky_child(task, i, label="", fail=False, delay=0.0):
    if r().incr(f"flaky:fan:{label}:{i}") == 1:
        raise RuntimeError("first attempt fails")
    mark(f"fanchild:{label}")


@dramatiq.actor(max_retries=0)
def fan_done(label):
    mark(f"fancallback:{label}")


@user_task(name="Stage {label}", max_retries=0)
def stage(task, label, delay=0.0):
    if delay:
        task.set_total_steps(20)
        for _ in range(20):
            time.sleep(delay / 20)
            task.step()
    r().rpush("side-effect:stages", label)


@user_task(name="Failing stage {label}", max_retries=0)
def stage_fail(task, label):
    r().rpush("side-effect:stages", label)
    raise RuntimeError(f"stage {label} broke")


@user_task(name="Unique {key}", unique=True, max_retries=0)
def unique_sleep(task, key, delay=0.5):
    time.sleep(delay)
    mark(f"unique:{key}")


@user_task(name="Report {label}", max_retries=0)
def with_file(task, label):
    task.add_artifact("Report", file=ContentFile(b"x,y\n", name=f"{label}.csv"))
    task.add_artifact("Link", url="https://example.com/x")


@user_task(name="Fan-out stage {label}", max_retries=0)
def fanout_stage(task, label, n):
    task.fan_out(fan_child, [{"i": i, "label": label} for i in range(n)])
    r().rpush("side-effect:stages", label)
