"""A task moves from Celery to Dramatiq: its earlier runs keep their pages and history, new runs
show next to them, and receivers of ``user_task_stopped`` keep firing."""

import pytest
from django.urls import reverse

from user_tasks.models import UserTaskStatus
from usertasks.models import EventKind
from usertasks.models import UserTaskStatus as CoreStatus

from .. import tasks_compat
from ..helpers import wait_final, wait_for
from . import celerytasks
from .helpers import side_effects, wait_state

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.compat.urls")]


def test_celery_then_dramatiq(celery_worker, worker, user, redis, client):
    before = celerytasks.count.delay(user.pk, 3, label="mv-celery")
    old = wait_state(UserTaskStatus.objects.get(task_id=before.id), ("Succeeded", "Failed", "Canceled"))
    assert old.state == "Succeeded" and old.backend == "celery"
    old_events = list(old.events.values_list("kind", flat=True))

    new = wait_final(tasks_compat.count.send_for(user, 3, label="mv-dramatiq"))
    assert new.state == "Succeeded" and new.backend == "dramatiq"
    assert (new.name, new.completed_steps, new.total_steps) == (old.name, 3, 3)

    # One dashboard, one status page each, the old history untouched.
    assert set(CoreStatus.objects.for_user(user).values_list("pk", flat=True)) == {old.pk, new.pk}
    assert list(old.events.values_list("kind", flat=True)) == old_events == [
        EventKind.ENQUEUED, EventKind.STARTED, EventKind.SUCCEEDED]
    client.force_login(user)
    for status in (old, new):
        assert client.get(status.get_absolute_url()).status_code == 200
    # ... and the django-user-tasks REST API lists both.
    listed = client.get(reverse("usertaskstatus-list")).json()
    assert sorted(item["state"] for item in listed) == ["Succeeded", "Succeeded"]
    # Receivers written for django-user-tasks heard about both runs.
    for task_id in (old.task_id, new.task_id):
        key = f"side-effect:compat:stopped:{task_id}"
        assert wait_for(lambda k=key: redis.get(k), 30, message="user_task_stopped") == b"Succeeded"
    assert side_effects(redis, "mv-celery") == side_effects(redis, "mv-dramatiq") == 1
