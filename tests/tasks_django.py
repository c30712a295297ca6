"""Tasks declared with Django's own ``@task`` (django.tasks, or the django-tasks backport),
run by usertasks' backend (tests/settings.py ``TASKS``).  Side effects go to Redis."""

import asyncio
import time

from django.core.files.base import ContentFile

from usertasks import current_task

from .tasks import mark, r

try:
    from django.tasks import task
except ImportError:
    from django_tasks import task


@task
def add(a, b):
    mark(f"dj-add:{a}:{b}")
    return a + b


@task
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@task
async def add_async(a, b):
    await asyncio.sleep(0.01)
    ctx = current_task()
    ctx.set_message("async step")
    return {"sum": a + b, "tracked": ctx.tracked}


@task(takes_context=True)
def with_context(context, label):
    return {
        "attempt": context.attempt,
        "id": context.task_result.id,
        "status": str(context.task_result.status),
        "label": label,
    }


@task
def fail(label):
    raise ValueError(f"Bad input: {label}")


@task
def not_json(label):
    return {"when": object()}


@task
def progress(n, label):
    ctx = current_task()
    ctx.set_total_steps(n)
    for i in range(n):
        ctx.step(message=f"item {i + 1} of {n}")
    ctx.add_artifact("Report", text=f"report {label}")
    ctx.add_artifact("Data", file=ContentFile(b"a,b\n1,2\n", name="data.csv"))
    mark(f"dj-progress:{label}")
    return n


@task
def wait_steps(label, n=3000):
    """Steps slowly until canceled."""
    ctx = current_task()
    ctx.set_total_steps(n)
    mark(f"dj-started:{label}")
    for _ in range(n):
        time.sleep(0.01)
        ctx.step()
    mark(f"dj-done:{label}")


@task(queue_name="django-tasks")
def on_other_queue(label):
    mark(f"dj-queue:{label}")
    return current_task().status.queue_name


@task
def nested(label):
    """Enqueues another task from inside a task: it belongs to the same user."""
    result = add.enqueue(2, 3)
    return result.id


@task(backend="retrying")
def flaky(failures, label):
    n = r().incr(f"flaky:dj:{label}")
    if n <= failures:
        raise RuntimeError(f"attempt {n} failed")
    return n


@task(backend="retrying")
def unique_sleep(label):
    time.sleep(0.5)
    return label
