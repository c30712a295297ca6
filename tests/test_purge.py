"""Expiry: old finished tasks go with their children, events, artifacts and files; active
tasks stay, whatever their dates."""

import io
import os
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from usertasks.artifacts import create_artifact
from usertasks.models import UserTaskArtifact, UserTaskEvent, UserTaskStatus, artifact_storage
from usertasks.purge import parse_age, purge, purge_expired_tasks
from usertasks.states import State

from . import tasks as core
from . import tasks_fanout as t
from .helpers import wait_final, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

_n = 0


def task(user, state=State.SUCCEEDED, days=40, parent=None, files=1):
    global _n
    _n += 1
    now = timezone.now()
    when = now - timedelta(days=days)
    row = UserTaskStatus.objects.create(
        user=user, task_id=f"t{_n}", task_class="x", name=f"task {_n}", state=state, parent=parent,
        created=when, finished=when if state in (State.SUCCEEDED, State.FAILED, State.CANCELED) else None,
        is_container=parent is None and files == 0,
    )
    UserTaskEvent.objects.create(status=row, kind=UserTaskEvent.Kind.ENQUEUED)
    for i in range(files):
        create_artifact(row.pk, f"file {i}", file=ContentFile(b"data", name=f"out{i}.csv"))
    create_artifact(row.pk, "link", url="https://example.com/")
    return row


def stored(row):
    storage = artifact_storage()
    return [a.file.name for a in row.artifacts.all() if a.file and storage.exists(a.file.name)]


def test_purge_deletes_expired_tasks_children_and_files_and_keeps_the_rest(user):
    old = [task(user) for _ in range(5)]
    container = task(user, files=0)
    kids = [task(user, parent=container) for _ in range(7)]
    grandkid = task(user, parent=kids[0])
    recent = task(user, days=1)
    pending = task(user, State.PENDING, days=400)
    running = task(user, State.IN_PROGRESS, days=400)
    running.finished = timezone.now() - timedelta(days=400)  # nonsense dates do not make it deletable
    running.save()
    waiting = task(user, State.IN_PROGRESS, files=0)  # an active container keeps its finished children
    old_kid_of_active = task(user, parent=waiting)
    files = [name for row in old + kids + [grandkid] for name in stored(row)]
    assert len(files) == 13
    kept = [recent, pending, running, waiting, old_kid_of_active]
    kept_files = [name for row in kept for name in stored(row)]

    result = purge(batch_size=2)

    assert (result.tasks, result.children, result.files) == (6, 8, 13)
    assert result.artifacts == 13 + 14
    assert set(UserTaskStatus.objects.values_list("pk", flat=True)) == {r.pk for r in kept}
    storage = artifact_storage()
    assert not any(storage.exists(name) for name in files)
    assert all(storage.exists(name) for name in kept_files)
    assert not UserTaskEvent.objects.exclude(status__in=kept).exists()
    assert not UserTaskArtifact.objects.exclude(status__in=kept).exists()
    # The empty per-task folders went too.  Only this test's tasks are looked at: other tests
    # (or a worker process) may have left folders of their own in the same storage.
    root = storage.path("usertasks")
    own = {str(r.uuid) for r in old + [container] + kids + [grandkid] + kept}
    assert len(own) == 19
    assert sorted(set(os.listdir(root)) & own) == sorted({str(r.uuid) for r in kept if stored(r)})


def test_dry_run_counts_and_deletes_nothing(user):
    container = task(user, files=0)
    for _ in range(3):
        task(user, parent=container)
    task(user, days=1)
    result = purge(dry_run=True)
    assert (result.tasks, result.children, result.files, result.artifacts) == (1, 3, 3, 7)
    assert str(result).startswith("would delete 1 task(s), 3 subtask(s)")
    assert UserTaskStatus.objects.count() == 5


@override_settings(USERTASKS={"MAX_AGE": timedelta(days=60)})
def test_max_age_setting_and_older_than(user):
    task(user, days=40)
    assert purge().tasks == 0
    assert purge(older_than="30d").tasks == 1


def test_management_command_progress_and_summary(user):
    for _ in range(4):
        task(user)
    out, err = io.StringIO(), io.StringIO()
    call_command("usertasks_purge", "--older-than", "10d", "--batch-size", "1", stdout=out, stderr=err)
    assert out.getvalue().startswith("Deleted 4 task(s), 0 subtask(s), 8 artifact(s), 4 file(s)")
    assert "100% 4/4" in err.getvalue()
    assert not UserTaskStatus.objects.exists()
    out = io.StringIO()
    call_command("usertasks_purge", "--dry-run", "--no-progress", stdout=out, stderr=io.StringIO())
    assert out.getvalue().startswith("Would delete 0 task(s)")


def test_ages():
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age("12h") == parse_age(43200)
    assert parse_age("1.5m") == timedelta(seconds=90)
    with pytest.raises(ValueError):
        parse_age("soon")


def test_purge_with_a_worker_removes_files_and_leaves_running_tasks(start_worker, user):
    start_worker(processes=2, threads=4)
    done = t.with_file.send_for(user, "w")
    busy = core.slow_steps.send_for(user, 100, 0.1, label="busy")
    wait_final(done, timeout=60)
    wait_for(lambda: UserTaskStatus.objects.get(pk=busy.pk).state == State.IN_PROGRESS, timeout=30, message="busy")
    names = stored(done)
    assert len(names) == 1
    purge_expired_tasks()  # the periodic actor, run in this process
    assert UserTaskStatus.objects.filter(pk=done.pk).exists()  # not 30 days old yet
    result = purge(older_than=0)
    assert result.tasks == 1 and result.files == 1
    assert not artifact_storage().exists(names[0])
    busy.refresh_from_db()
    assert busy.state == State.IN_PROGRESS
    busy.cancel()
    wait_final(busy, timeout=60)


def test_a_batch_that_finds_the_database_locked_is_tried_again(user, monkeypatch):
    """Another writer holding the lock (SQLite's "database is locked" when a transaction that has
    read must write) rolls the batch back whole; it is tried again, files included."""
    from django.db import OperationalError

    from usertasks import purge as purge_module

    old = task(user)
    names = stored(old)
    calls = []
    files = purge_module._files

    def locked_twice(*args):
        calls.append(1)
        if len(calls) <= 2:
            raise OperationalError("database is locked")
        return files(*args)

    monkeypatch.setattr(purge_module, "_files", locked_twice)
    monkeypatch.setattr(purge_module.time, "sleep", lambda s: None)
    result = purge()
    assert (result.tasks, result.files, len(calls)) == (1, 1, 3)
    assert not UserTaskStatus.objects.filter(pk=old.pk).exists()
    assert not artifact_storage().exists(names[0])

    other = task(user)
    calls.clear()
    monkeypatch.setattr(purge_module, "_files", lambda *a: (_ for _ in ()).throw(OperationalError("no such table: x")))
    with pytest.raises(OperationalError, match="no such table"):
        purge()  # not a lock: raised at once
    assert UserTaskStatus.objects.filter(pk=other.pk).exists()


def test_max_age_falls_back_to_django_user_tasks_setting(settings):
    """A site that switches keeps its django-user-tasks age: the workers' purge must not delete
    sooner than it asked for.  ``USERTASKS["MAX_AGE"]``, when set, wins."""
    from usertasks.conf import app_settings

    settings.USERTASKS = {"BASE_URL": "http://testserver"}
    assert app_settings.MAX_AGE == timedelta(days=30)
    settings.USER_TASKS_MAX_AGE = 90 * 86400
    assert app_settings.MAX_AGE == timedelta(days=90)
    settings.USERTASKS = {"MAX_AGE": timedelta(days=7)}
    assert app_settings.MAX_AGE == timedelta(days=7)
