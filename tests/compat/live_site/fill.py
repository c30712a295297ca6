"""Run with the real django-user-tasks (its own virtualenv): fill its tables the way a live site
would have, then write what is there to the JSON file named by ``LIVE_SITE_SNAPSHOT``."""

import json
import os

import django

django.setup()

from clientapp.models import CourseImport, LatestReport  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.files.base import ContentFile  # noqa: E402
from user_tasks.models import UserTaskArtifact, UserTaskStatus  # noqa: E402

User = get_user_model()
ada = User.objects.create_user("ada", "ada@example.com", "pw")
bob = User.objects.create_user("bob", "bob@example.com", "pw")


def status(name, state, user=ada, **fields):
    row = UserTaskStatus.objects.create(
        user=user, name=name, task_class="cms.tasks.import_olx", task_id=f"celery-{name}", total_steps=4, **fields
    )
    if state != UserTaskStatus.PENDING:
        UserTaskStatus.objects.filter(pk=row.pk).update(state=state, completed_steps=2)
    return row


rows = {state: status(f"task {state}", state) for state in (
    UserTaskStatus.PENDING, UserTaskStatus.IN_PROGRESS, UserTaskStatus.RETRYING,
    UserTaskStatus.SUCCEEDED, UserTaskStatus.FAILED, UserTaskStatus.CANCELED,
)}
custom = status("task custom", UserTaskStatus.PENDING, user=bob)
custom.set_state("Updating")
chain = UserTaskStatus.objects.create(
    user=ada, name="Chain: export", task_class="celery.chain", task_id="chain-1", is_container=True, total_steps=2
)
for i in (1, 2):
    step = status(f"step {i}", UserTaskStatus.SUCCEEDED if i == 1 else UserTaskStatus.IN_PROGRESS, parent=chain)
UserTaskStatus.objects.filter(pk=chain.pk).update(state=UserTaskStatus.IN_PROGRESS)

done = rows[UserTaskStatus.SUCCEEDED]
UserTaskArtifact.objects.create(status=done, file=ContentFile(b"course,grade\n", name="export.csv"))
UserTaskArtifact.objects.create(status=done, name="BASE_URL", url="https://studio.example.com")
rows[UserTaskStatus.FAILED].fail("Unknown course")  # an "Error" text artifact
CourseImport.objects.create(name="import of done", task=done)
CourseImport.objects.create(name="import of custom", task=custom)
LatestReport.objects.create(name="latest", task=rows[UserTaskStatus.FAILED])


def dt(value):
    return value.isoformat()


snapshot = {
    "statuses": [
        {
            "uuid": str(s.uuid), "task_id": s.task_id, "name": s.name, "state": s.state, "user": s.user.username,
            "completed_steps": s.completed_steps, "total_steps": s.total_steps, "attempts": s.attempts,
            "is_container": s.is_container, "task_class": s.task_class,
            "parent": str(s.parent.uuid) if s.parent_id else None, "created": dt(s.created), "modified": dt(s.modified),
        }
        for s in UserTaskStatus.objects.order_by("id")
    ],
    "artifacts": [
        {"uuid": str(a.uuid), "status": str(a.status.uuid), "name": a.name, "file": a.file.name or "",
         "url": a.url, "text": a.text, "created": dt(a.created)}
        for a in UserTaskArtifact.objects.order_by("id")
    ],
    "course_imports": {c.name: str(c.task.uuid) for c in CourseImport.objects.all()},
    "latest_reports": {r.name: str(r.task.uuid) for r in LatestReport.objects.all()},
}
with open(os.environ["LIVE_SITE_SNAPSHOT"], "w") as f:
    json.dump(snapshot, f)
print("filled", len(snapshot["statuses"]), "tasks")
