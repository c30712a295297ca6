"""Dramatiq side of the compatibility tests: the Dramatiq version of a task that used to run on
Celery (``tests.compat.celerytasks.count``), and a ``user_task_stopped`` receiver written for
django-user-tasks that records in Redis which tasks stopped, in whichever process."""

import os

import redis
from django.dispatch import receiver

from user_tasks import user_task_stopped
from usertasks import user_task


@receiver(user_task_stopped, dispatch_uid="tests.compat.record_stopped")
def record_stopped(sender, status, **kwargs):
    client = redis.Redis.from_url(os.environ["USERTASKS_TEST_REDIS_URL"])
    client.set(f"side-effect:compat:stopped:{status.task_id}", status.state)
    if status.parent is None:  # what a receiver that emails top-level tasks would email
        client.incr(f"side-effect:compat:top-stopped:{status.task_id}")


@user_task(name="Count to {n}", actor_name="compat_count", max_retries=0)
def count(task, n, label="x"):
    """``compat.count`` moved to Dramatiq: same name, same steps."""
    task.set_total_steps(n)
    for _ in range(n):
        task.step()
    redis.Redis.from_url(os.environ["USERTASKS_TEST_REDIS_URL"]).incr(f"side-effect:compat:{label}:ran")
