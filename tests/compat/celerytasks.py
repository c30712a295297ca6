"""Celery tasks written against the django-user-tasks API, as a site would have them.

Side effects are counted in Redis under ``side-effect:compat:<label>:<what>`` so tests can tell
whether (and how often) a body ran.
"""

import time

import redis as redis_lib
from celery import shared_task
from django.conf import settings
from django.core.files.base import ContentFile
from tests.tasks_compat import record_stopped  # noqa: F401  (user_task_stopped -> Redis)
from user_tasks.models import UserTaskArtifact
from user_tasks.tasks import UserTask


def mark(label, what="ran"):
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    client.incr(f"side-effect:compat:{label}:{what}")


class CountingTask(UserTask):
    """Names itself after its arguments and takes ``n`` steps."""

    abstract = True

    @classmethod
    def generate_name(cls, arguments_dict):
        return f"Count to {arguments_dict['n']}"

    @staticmethod
    def calculate_total_steps(arguments_dict):
        return arguments_dict["n"]


@shared_task(base=CountingTask, bind=True, name="compat.count")
def count(self, user_id, n, label="x", delay=0.0):
    mark(label, "started")
    for _ in range(n):
        if delay:
            time.sleep(delay)
        self.status.increment_completed_steps()
    mark(label)
    return n


@shared_task(base=UserTask, bind=True, name="compat.fail")
def fail(self, user_id, label="x"):
    mark(label)
    raise ValueError(f"Bad input: {label}")


@shared_task(base=UserTask, bind=True, name="compat.flaky", max_retries=3)
def flaky(self, user_id, label="x"):
    mark(label)
    if self.request.retries == 0:
        raise self.retry(exc=RuntimeError("first attempt fails"), countdown=0.2)
    return "ok"


@shared_task(base=UserTask, bind=True, name="compat.stages")
def stages(self, user_id, label="x"):
    """Uses every progress method of the status row."""
    status = self.status
    status.increment_total_steps(2)
    status.set_state("Sending emails")
    status.set_name(f"Stages {label}")
    status.increment_completed_steps(2)
    UserTaskArtifact.objects.create(status=status, text="hello")
    UserTaskArtifact.objects.create(status=status, name="Report", file=ContentFile(b"a,b\n", name="report.csv"))
    UserTaskArtifact.objects.create(status=status, name="Link", url="https://example.com/r")
    mark(label)
    return "done"


@shared_task(base=UserTask, bind=True, name="compat.fails_itself")
def fails_itself(self, user_id, label="x"):
    """Marks itself failed and returns normally (success must not overwrite that)."""
    self.status.fail("gave up")
    mark(label)


@shared_task(base=UserTask, bind=True, name="compat.step")
def step(self, previous=None, user_id=None, label="x", value=1):
    """A chain step: adds ``value`` to the previous result."""
    mark(label)
    self.status.increment_completed_steps()
    return (previous or 0) + value


@shared_task(base=UserTask, bind=True, name="compat.collect")
def collect(self, results, user_id=None, label="x"):
    """A chord body."""
    mark(label)
    return sum(results)


@shared_task(base=UserTask, bind=True, name="compat.no_user")
def no_user(self, n, label="x"):
    mark(label)
    return n


@shared_task(name="compat.plain")
def plain(label="x"):
    mark(label)
    return 1


@shared_task(base=UserTask, name="compat.unbound")
def unbound(user_id, n, *rest, label="x", **extra):
    """Not bound: no ``self``."""
    mark(label)
    return n
