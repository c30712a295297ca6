"""Run with usertasks (the project's virtualenv) on the database ``fill.py`` filled: follow
docs/migration.md (migrate, import), then check every row, file, time, constraint and foreign
key against the snapshot; import again and check that nothing changed.  Exits non-zero on the
first difference."""

import json
import os
from io import StringIO

import django

django.setup()

from clientapp.models import CourseImport, LatestReport  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import IntegrityError, transaction  # noqa: E402
from django.utils.dateparse import parse_datetime  # noqa: E402

from user_tasks.models import UserTaskArtifact, UserTaskStatus  # noqa: E402
from usertasks.models import UserTaskStatus as CoreStatus  # noqa: E402

with open(os.environ["LIVE_SITE_SNAPSHOT"]) as f:
    legacy = json.load(f)

# docs/migration.md, step 2: migrate.  The project's migration that depends on
# ("user_tasks", "0004_url_textfield") was applied under django-user-tasks; nothing clashes.
call_command("migrate", verbosity=0)

# Tasks started with usertasks before the import: their ids and uuids must not collide.
from django.contrib.auth import get_user_model  # noqa: E402

ada = get_user_model().objects.get(username="ada")
early = [
    CoreStatus.objects.create(user=ada, name=f"early {i}", task_class="app.early", task_id=f"early-{i}") for i in range(3)
]


def imported():
    out = StringIO()
    call_command("usertasks_import_user_tasks", stdout=out)
    return out.getvalue()


first = imported()
assert first.startswith(f"Imported {len(legacy['statuses'])} tasks (0 already there)"), first
assert "Repointed clientapp.CourseImport.task, clientapp.LatestReport.task" in first, first


def snapshot():
    return {
        "statuses": sorted(
            (str(s.uuid), s.task_id, s.name, s.state, s.user.username, s.completed_steps, s.total_steps, s.attempts,
             s.is_container, s.task_class, str(s.parent.uuid) if s.parent_id else None, s.created, s.modified)
            for s in UserTaskStatus.objects.exclude(task_class="app.early")
        ),
        "artifacts": sorted(
            (str(a.uuid), str(a.status.uuid), a.name, a.file.name or "", a.url, a.text, a.created)
            for a in UserTaskArtifact.objects.all()
        ),
        "course_imports": {c.name: str(c.task.uuid) for c in CourseImport.objects.all()},
        "latest_reports": {r.name: str(r.task.uuid) for r in LatestReport.objects.all()},
    }


now = snapshot()
expected_statuses = sorted(
    (s["uuid"], s["task_id"], s["name"], s["state"], s["user"], s["completed_steps"], s["total_steps"],
     s["attempts"], s["is_container"], s["task_class"], s["parent"], parse_datetime(s["created"]),
     parse_datetime(s["modified"]))
    for s in legacy["statuses"]
)
assert now["statuses"] == expected_statuses, (now["statuses"], expected_statuses)
expected_artifacts = sorted(
    (a["uuid"], a["status"], a["name"], a["file"], a["url"], a["text"], parse_datetime(a["created"]))
    for a in legacy["artifacts"]
)
assert now["artifacts"] == expected_artifacts, (now["artifacts"], expected_artifacts)
assert now["course_imports"] == legacy["course_imports"]
assert now["latest_reports"] == legacy["latest_reports"]

# Files: where they were, readable through the compatibility model.
for artifact in UserTaskArtifact.objects.exclude(file=""):
    with artifact.file.open("rb") as f:
        assert f.read() == b"course,grade\n"

# States: the custom one kept (In Progress to usertasks), final ones with their finish time.
custom = UserTaskStatus.objects.get(name="task custom")
assert custom.state == "Updating" and custom.effective_state == "In Progress" and custom.is_active
assert UserTaskStatus.objects.get(name="task Succeeded").finished is not None
assert UserTaskStatus.objects.get(name="task Failed").error == "Unknown course"
assert {s.pk for s in early} == set(CoreStatus.objects.filter(task_class="app.early").values_list("pk", flat=True))

# The project's foreign keys accept tasks created after the switch, and refuse missing ones.
late = UserTaskStatus.objects.create(user=ada, name="after the switch", task_class="cms.tasks.import_olx")
CourseImport.objects.create(name="import after", task=late)
LatestReport.objects.create(name="latest after", task=late)
try:
    with transaction.atomic():
        CourseImport.objects.create(name="dangling", task_id=late.pk + 100_000)
except IntegrityError:
    pass
else:
    raise AssertionError("the foreign key accepts a task that does not exist")

# Again: nothing new, nothing changed.
before = snapshot()
again = imported()
assert again.startswith(f"Imported 0 tasks ({len(legacy['statuses'])} already there)"), again
assert "Repointed" not in again, again
assert snapshot() == before
print("switched: ok")
