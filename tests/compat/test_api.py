"""The django-user-tasks REST API (``tasks/`` and ``artifacts/``) for the owner, another user, a
superuser and an anonymous client, plus the usertasks status page of the same rows."""

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse

from user_tasks.models import UserTaskArtifact, UserTaskStatus

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.compat.urls")]


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def tasks(user, other_user):
    mine = UserTaskStatus.objects.create(user=user, name="mine", task_class="compat.count", total_steps=2)
    done = UserTaskStatus.objects.create(user=user, name="done", task_class="compat.count", total_steps=1)
    done.start()
    done.succeed()
    theirs = UserTaskStatus.objects.create(user=other_user, name="theirs", task_class="compat.count", total_steps=1)
    art = UserTaskArtifact.objects.create(status=done, name="Report", file=ContentFile(b"x", name="r.txt"))
    other_art = UserTaskArtifact.objects.create(status=theirs, text="secret")
    return {"mine": mine, "done": done, "theirs": theirs, "art": art, "other_art": other_art}


def client_for(client, who):
    if who is not None:
        client.force_login(who)
    return client


def test_url_names():
    assert reverse("usertaskstatus-list") == "/api/user_tasks/tasks/"
    assert reverse("usertaskartifact-list") == "/api/user_tasks/artifacts/"
    assert reverse("usertaskstatus-detail", args=["u"]) == "/api/user_tasks/tasks/u/"
    assert reverse("usertaskstatus-cancel", args=["u"]) == "/api/user_tasks/tasks/u/cancel/"
    assert reverse("usertaskartifact-detail", args=["u"]) == "/api/user_tasks/artifacts/u/"


def test_owner(client, user, tasks):
    c = client_for(client, user)
    listing = c.get(reverse("usertaskstatus-list"))
    assert listing.status_code == 200
    assert sorted(item["name"] for item in listing.json()) == ["done", "mine"]
    detail = c.get(reverse("usertaskstatus-detail", args=[tasks["done"].uuid])).json()
    assert detail["state"] == "Succeeded" and detail["state_text"] == "Succeeded"
    assert (detail["completed_steps"], detail["total_steps"], detail["attempts"]) == (1, 1, 1)
    assert detail["artifacts"] == ["http://testserver" + reverse("usertaskartifact-detail", args=[tasks["art"].uuid])]
    art = c.get(detail["artifacts"][0]).json()
    assert art["name"] == "Report" and art["file"].endswith("r.txt")
    assert art["status"].endswith(reverse("usertaskstatus-detail", args=[tasks["done"].uuid]))
    assert [a["name"] for a in c.get(reverse("usertaskartifact-list")).json()] == ["Report"]
    # Cancel (POST) needs the cancel permission: the owner has it.
    canceled = c.post(reverse("usertaskstatus-cancel", args=[tasks["mine"].uuid]))
    assert canceled.status_code == 200 and canceled.json()["state"] == "Canceled"
    # Delete: the task, its artifacts and their files.
    name = tasks["art"].file.name
    storage = tasks["art"].file.storage
    assert storage.exists(name)
    assert c.delete(reverse("usertaskstatus-detail", args=[tasks["done"].uuid])).status_code == 204
    assert not UserTaskStatus.objects.filter(pk=tasks["done"].pk).exists()
    assert not storage.exists(name)


def test_delete_of_a_pending_task_cancels_and_deletes_it(client, user, tasks):
    c = client_for(client, user)
    response = c.delete(reverse("usertaskstatus-detail", args=[tasks["mine"].uuid]))
    assert response.status_code == 204
    assert not UserTaskStatus.objects.filter(pk=tasks["mine"].pk).exists()


def test_delete_of_a_running_task_stops_it_and_deletes_it_once_ended(client, user, tasks):
    running = tasks["mine"]
    running.start()
    c = client_for(client, user)
    response = c.delete(reverse("usertaskstatus-detail", args=[running.uuid]))
    # Its worker may still write to it: asked to stop, kept until it has.
    assert response.status_code == 409
    assert response.json() == {"detail": "The task is stopping; delete it once it has ended."}
    running.refresh_from_db()
    assert running.state == "In Progress" and running.cancel_requested is not None
    with pytest.raises(Exception, match="canceled"):
        running.increment_completed_steps()  # the worker's next step stops it...
    running.fail("Stopped.")  # ...and its run ends (the signal handlers' part)
    assert c.delete(reverse("usertaskstatus-detail", args=[running.uuid])).status_code == 204
    assert not UserTaskStatus.objects.filter(pk=running.pk).exists()


def test_other_user_sees_nothing_of_mine(client, other_user, tasks):
    c = client_for(client, other_user)
    assert [i["name"] for i in c.get(reverse("usertaskstatus-list")).json()] == ["theirs"]
    assert c.get(reverse("usertaskstatus-detail", args=[tasks["mine"].uuid])).status_code == 404
    assert c.post(reverse("usertaskstatus-cancel", args=[tasks["mine"].uuid])).status_code == 404
    assert c.delete(reverse("usertaskstatus-detail", args=[tasks["done"].uuid])).status_code == 404
    assert c.get(reverse("usertaskartifact-detail", args=[tasks["art"].uuid])).status_code == 404
    assert [a["text"] for a in c.get(reverse("usertaskartifact-list")).json()] == ["secret"]
    tasks["mine"].refresh_from_db()
    assert tasks["mine"].state == "Pending"


def test_superuser_sees_everything(client, superuser, tasks):
    c = client_for(client, superuser)
    assert sorted(i["name"] for i in c.get(reverse("usertaskstatus-list")).json()) == ["done", "mine", "theirs"]
    assert len(c.get(reverse("usertaskartifact-list")).json()) == 2
    assert c.post(reverse("usertaskstatus-cancel", args=[tasks["theirs"].uuid])).json()["state"] == "Canceled"


def test_anonymous_is_refused(client, tasks):
    assert client.get(reverse("usertaskstatus-list")).status_code in (401, 403)
    assert client.get(reverse("usertaskstatus-detail", args=[tasks["mine"].uuid])).status_code in (401, 403)
    assert client.post(reverse("usertaskstatus-cancel", args=[tasks["mine"].uuid])).status_code in (401, 403)
    assert client.get(reverse("usertaskartifact-list")).status_code in (401, 403)


def test_artifact_filters_setting_is_honoured(client, superuser, tasks, settings):
    settings.USER_TASKS_ARTIFACT_FILTERS = ("tests.compat.test_api.OnlyReports",)
    c = client_for(client, superuser)
    assert [a["name"] for a in c.get(reverse("usertaskartifact-list")).json()] == ["Report"]
    settings.USER_TASKS_STATUS_FILTERS = ()
    assert len(c.get(reverse("usertaskstatus-list")).json()) == 3


def test_cancel_permission_exists_for_model_backend_sites(user, tasks):
    from django.contrib.auth.models import Permission

    perm = Permission.objects.get(content_type__app_label="user_tasks", codename="cancel_usertaskstatus")
    user.user_permissions.add(perm)
    user = type(user).objects.get(pk=user.pk)
    assert user.has_perm("user_tasks.cancel_usertaskstatus")


def test_status_page_shows_a_celery_task(client, user, tasks):
    client.force_login(user)
    status = tasks["done"]
    page = client.get(status.get_absolute_url())
    assert page.status_code == 200
    assert "done" in page.content.decode()
    dashboard = client.get(reverse("usertasks:dashboard"))
    assert "mine" in dashboard.content.decode()


class OnlyReports:
    def filter_queryset(self, request, queryset, view):
        return queryset.filter(name="Report")


def test_admin_pages(client, superuser, tasks):
    client.force_login(superuser)
    for url in ("/admin/user_tasks/usertaskstatus/", "/admin/user_tasks/usertaskartifact/",
                f"/admin/user_tasks/usertaskstatus/{tasks['done'].pk}/change/",
                f"/admin/user_tasks/usertaskartifact/{tasks['art'].pk}/change/"):
        assert client.get(url).status_code == 200, url
