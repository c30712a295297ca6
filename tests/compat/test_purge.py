"""``purge_old_user_tasks``: age from completion, stored files deleted, active tasks kept, batches."""

from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from user_tasks.models import UserTaskArtifact, UserTaskStatus
from user_tasks.purge import purge
from user_tasks.tasks import purge_old_user_tasks

pytestmark = pytest.mark.django_db(transaction=True)


def row(user, state, created_days, finished_days=None, **kwargs):
    now = timezone.now()
    fields = dict(user=user, name=f"{state} {created_days}", task_class="x", total_steps=1, state=state)
    fields.update(kwargs)
    status = UserTaskStatus.objects.create(**fields)
    UserTaskStatus.objects.filter(pk=status.pk).update(
        created=now - timedelta(days=created_days),
        finished=None if finished_days is None else now - timedelta(days=finished_days),
    )
    return status


def test_age_counts_from_completion_and_active_tasks_stay(user, transactional_db):
    old_done = row(user, "Succeeded", 60, 40)
    old_failed = row(user, "Failed", 45, 31)
    recently_done = row(user, "Succeeded", 60, 1)  # created long ago, finished yesterday
    running = row(user, "In Progress", 90)
    pending = row(user, "Pending", 90)
    container = row(user, "Failed", 90, 60, is_container=True, task_class="celery.group")
    active_child = row(user, "In Progress", 90, parent=container)
    art = UserTaskArtifact.objects.create(status=old_done, file=ContentFile(b"data", name="out.bin"))
    storage, name = art.file.storage, art.file.name
    assert storage.exists(name)

    assert purge() == 2
    left = set(UserTaskStatus.objects.values_list("pk", flat=True))
    assert left == {recently_done.pk, running.pk, pending.pk, container.pk, active_child.pk}
    assert old_failed.pk not in left
    assert not storage.exists(name)
    assert not UserTaskArtifact.objects.filter(pk=art.pk).exists()


def test_setting_and_batches(user, transactional_db, settings):
    for _ in range(5):
        row(user, "Succeeded", 5, 3)
    kept = row(user, "Canceled", 5, 1)
    settings.USER_TASKS_MAX_AGE = timedelta(days=2)
    settings.USER_TASKS_PURGE_BATCH_SIZE = 2
    assert purge() == 5
    assert list(UserTaskStatus.objects.values_list("pk", flat=True)) == [kept.pk]


def test_the_celery_task(eager, user):
    gone = row(user, "Succeeded", 40, 40)
    group = row(user, "Succeeded", 40, 40, is_container=True, task_class="celery.group")
    child = row(user, "Succeeded", 40, 40, parent=group)
    result = purge_old_user_tasks.delay()
    assert result.get() == 2
    assert not UserTaskStatus.objects.filter(pk__in=[gone.pk, group.pk, child.pk]).exists()
