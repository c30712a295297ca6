"""Actors for the web tests: the demo's tasks (so the worker runs what the demo page starts)
and a few of our own."""

import time

from django.core.files.base import ContentFile

from demo.tasks import export_report, import_enrolments, publish_summary  # noqa: F401  (registers them)
from usertasks import user_task


@user_task(name="Web artifacts {label}", max_retries=0)
def web_artifacts(task, label=""):
    task.set_total_steps(1)
    task.add_artifact("../../etc/passwd", file=ContentFile(b"hello,world\n", name="../../../etc/passwd"))
    task.add_artifact("Link", url="https://example.com/x?a=1&b=<2>")
    task.add_artifact("<script>alert(1)</script>", text="<script>alert('x')</script> \u00e9\u4e2d\U0001F600")
    task.step(message="<img src=x onerror=alert(1)>")


@user_task(name="Web slow {label}", max_retries=0)
def web_slow(task, n=200, delay=0.1, label=""):
    task.set_total_steps(n)
    for i in range(n):
        time.sleep(delay)
        task.step(message=f"step {i + 1}")


@user_task(name="Web notify {label}", notify=["Failed"], max_retries=0)
def web_notify_failed_only(task, ok=True, label=""):
    if not ok:
        raise ValueError("it broke")


def make_task(user, name="Task", state="Pending", **fields):
    """A status row written directly (no worker), for page and permission tests."""
    import uuid

    from django.utils import timezone

    from usertasks.models import UserTaskStatus

    now = timezone.now()
    if state in ("Succeeded", "Failed", "Canceled"):
        fields.setdefault("started", now)
        fields.setdefault("finished", now)
    elif state == "In Progress":
        fields.setdefault("started", now)
    return UserTaskStatus.objects.create(
        user=user, task_id=uuid.uuid4().hex, task_class="tests.tasks_web.manual", name=name, state=state, **fields
    )
