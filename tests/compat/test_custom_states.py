"""A custom state (django-user-tasks' ``set_state("Updating")``) is stored as it is given and is
In Progress to everything of usertasks: the dashboard and status page, the JSON API, heartbeats,
the reaper, cancel and purge."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from user_tasks.models import UserTaskStatus
from usertasks import runs
from usertasks.models import EventKind
from usertasks.purge import purge
from usertasks.reaper import reap

from ..helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def updating(user, name="Import course"):
    status = UserTaskStatus.objects.create(user=user, name=name, task_class="cms.import", total_steps=3)
    status.start()
    status.set_state("Updating")
    assert status.state == "Updating"
    return status


def test_pages_and_api_show_it_in_progress(client, user):
    status = updating(user, name="Custom <b>state</b>")
    client.force_login(user)
    page = client.get(reverse("usertasks:status", args=[status.uuid])).content.decode()
    assert 'data-state="In Progress"' in page and "ut-state-in-progress" in page
    assert "Updating" in page  # as the task's message
    dashboard = client.get(reverse("usertasks:dashboard") + "?filter=active").content.decode()
    assert "Custom &lt;b&gt;state&lt;/b&gt;" in dashboard
    data = client.get(reverse("usertasks:api-detail", args=[status.uuid])).json()
    assert data["state"] == "In Progress" and data["message"] == "Updating"
    listed = client.get(reverse("usertasks:api-list") + "?filter=active").json()
    assert [t["uuid"] for t in listed["results"]] == [str(status.uuid)]


def test_a_registered_run_keeps_its_heartbeat(user, settings):
    settings.USERTASKS = dict(settings.USERTASKS, PROGRESS_INTERVAL=0.05)
    status = updating(user)
    old = timezone.now() - timedelta(minutes=5)
    UserTaskStatus.objects.filter(pk=status.pk).update(heartbeat=old)
    runs.begin(status, key=status.task_id, worker="celery:host:1:t", attempt=1)
    try:
        wait_for(lambda: UserTaskStatus.objects.get(pk=status.pk).heartbeat > old, 10, message="a heartbeat")
    finally:
        runs.end(status.task_id)
    assert UserTaskStatus.objects.get(pk=status.pk).state == "Updating"


def test_the_reaper_ends_it_when_its_worker_is_gone(user, redis):
    status = updating(user)
    old = timezone.now() - timedelta(minutes=30)
    UserTaskStatus.objects.filter(pk=status.pk).update(heartbeat=old, worker="celery:gone:1:t")
    result = reap()
    assert result.worker_lost == [status.pk]
    status.refresh_from_db()
    assert status.state == "Failed" and status.events.filter(kind=EventKind.WORKER_LOST).exists()


def test_cancel_stops_it_and_purge_leaves_it_until_it_ends(user, redis):
    status = updating(user)
    UserTaskStatus.objects.filter(pk=status.pk).update(modified=timezone.now() - timedelta(days=400))
    assert purge(timedelta(days=1)).tasks == 0  # active: never purged
    assert status.cancel(by=user) is True
    status.refresh_from_db()
    assert status.cancel_requested is not None and status.state == "Updating"
    with pytest.raises(Exception, match="canceled"):
        status.increment_completed_steps()


@pytest.mark.urls("tests.compat.urls")
def test_the_admin_cancels_it_as_an_active_task(admin_client, user, redis):
    status = updating(user)
    url = reverse("admin:user_tasks_usertaskstatus_changelist")
    response = admin_client.post(url, {"action": "cancel_tasks", "_selected_action": [status.pk], "post": "yes"})
    assert response.status_code == 302
    status.refresh_from_db()
    assert status.cancel_requested is not None
