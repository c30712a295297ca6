"""Every endpoint x every role: owner, other user, staff, superuser, anonymous."""

import pytest
from django.core.files.base import ContentFile
from django.test import override_settings
from django.urls import reverse

from tests.tasks_web import make_task
from usertasks.artifacts import create_artifact
from usertasks.models import UserTaskStatus

pytestmark = pytest.mark.django_db

ROLES = ("owner", "other", "staff", "superuser", "anonymous")


@pytest.fixture
def people(django_user_model):
    owner = django_user_model.objects.create_user("owner", "owner@example.com", "pw")
    return {
        "owner": owner,
        "other": django_user_model.objects.create_user("other", "other@example.com", "pw"),
        "staff": django_user_model.objects.create_user("staff", "staff@example.com", "pw", is_staff=True),
        "superuser": django_user_model.objects.create_superuser("root", "root@example.com", "pw"),
        "anonymous": None,
    }


def client_for(client, people, role):
    if people[role] is not None:
        client.force_login(people[role])
    return client


# Default policy: owner and superuser may do everything; everyone else gets 404.
ALLOWED = {"owner": True, "superuser": True, "other": False, "staff": False, "anonymous": False}


@pytest.mark.parametrize("role", ROLES)
def test_status_page_and_api_detail(client, people, role):
    task = make_task(people["owner"], "Mine", "In Progress")
    c = client_for(client, people, role)
    page = c.get(reverse("usertasks:status", args=[task.uuid]))
    api = c.get(reverse("usertasks:api-detail", args=[task.uuid]))
    stream = c.get(reverse("usertasks:api-events", args=[task.uuid])) if not ALLOWED[role] else None
    if ALLOWED[role]:
        assert page.status_code == 200 and api.status_code == 200
        assert api.json()["uuid"] == str(task.uuid)
    else:
        assert page.status_code == 404 and api.status_code == 404 and stream.status_code == 404
        assert b"Mine" not in page.content and b"Mine" not in api.content


@pytest.mark.parametrize("role", ROLES)
def test_artifact(client, people, role):
    task = make_task(people["owner"], "Mine", "Succeeded")
    art = create_artifact(task.pk, "Out", file=ContentFile(b"secret,data\n", name="out.csv"))
    response = client_for(client, people, role).get(reverse("usertasks:artifact", args=[art.uuid]))
    if ALLOWED[role]:
        assert response.status_code == 200
        assert b"".join(response.streaming_content) == b"secret,data\n"
    else:
        assert response.status_code == 404


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", ["page", "api"])
def test_cancel(client, people, role, kind):
    task = make_task(people["owner"], "Mine", "Pending")
    c = client_for(client, people, role)
    if kind == "page":
        response = c.post(reverse("usertasks:cancel", args=[task.uuid]), {"confirm": "yes"})
    else:
        response = c.post(reverse("usertasks:api-cancel", args=[task.uuid]))
    task.refresh_from_db()
    if ALLOWED[role]:
        assert response.status_code == (302 if kind == "page" else 200)
        assert task.state == "Canceled"
    else:
        assert response.status_code == 404
        assert task.state == "Pending"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", ["page", "api", "api-method"])
def test_delete(client, people, role, kind):
    task = make_task(people["owner"], "Mine", "Succeeded")
    c = client_for(client, people, role)
    if kind == "page":
        response = c.post(reverse("usertasks:delete", args=[task.uuid]), {"confirm": "yes"})
    elif kind == "api":
        response = c.post(reverse("usertasks:api-delete", args=[task.uuid]))
    else:
        response = c.delete(reverse("usertasks:api-detail", args=[task.uuid]))
    exists = UserTaskStatus.objects.filter(pk=task.pk).exists()
    if ALLOWED[role]:
        assert response.status_code == (302 if kind == "page" else 204)
        assert not exists
    else:
        assert response.status_code == 404
        assert exists


@pytest.mark.parametrize("role", ROLES)
def test_dashboard_and_list_show_only_own_tasks(client, people, role):
    make_task(people["owner"], "Owner's task")
    c = client_for(client, people, role)
    page = c.get(reverse("usertasks:dashboard"))
    api = c.get(reverse("usertasks:api-list"))
    if role == "anonymous":
        assert page.status_code == 302 and "/accounts/login/" in page["Location"]
        assert api.status_code == 403
        return
    assert page.status_code == 200 and api.status_code == 200
    mine = role == "owner"
    assert (b"Owner&#x27;s task" in page.content) is mine
    assert (api.json()["count"] == 1) is mine


def test_unknown_uuids_are_404(client, people):
    import uuid

    client.force_login(people["superuser"])
    u = uuid.uuid4()
    for name in ("status", "api-detail", "artifact", "api-events"):
        assert client.get(reverse(f"usertasks:{name}", args=[u])).status_code == 404
    for name in ("cancel", "delete", "api-cancel", "api-delete"):
        assert client.post(reverse(f"usertasks:{name}", args=[u])).status_code == 404


def test_inactive_owner_sees_nothing(client, people):
    task = make_task(people["owner"], "Mine")
    people["owner"].is_active = False
    people["owner"].save()
    client.force_login(people["owner"])
    assert client.get(reverse("usertasks:api-detail", args=[task.uuid])).status_code in (302, 404)


def test_fan_out_children_hidden_from_dashboard_but_visible_to_owner(client, people):
    parent = make_task(people["owner"], "Parent", is_container=True)
    child = make_task(people["owner"], "Child", parent=parent)
    client.force_login(people["owner"])
    data = client.get(reverse("usertasks:api-list")).json()
    assert [r["name"] for r in data["results"]] == ["Parent"]
    assert client.get(reverse("usertasks:status", args=[child.uuid])).status_code == 200


# -- a custom policy: support staff may view (and download) every task, not cancel or delete.

SUPPORT = {"BASE_URL": "http://testserver", "PERMISSIONS": "tests.test_permissions.SupportMayView"}

from usertasks.permissions import OwnerOrSuperuser  # noqa: E402


class SupportMayView(OwnerOrSuperuser):
    def visible(self, user, queryset):
        if user.is_authenticated and user.is_active and user.is_staff:
            return queryset
        return super().visible(user, queryset)

    def can_download(self, user, status, artifact=None):
        return True


@override_settings(USERTASKS=SUPPORT)
def test_support_staff_policy(client, people):
    task = make_task(people["owner"], "Mine", "Succeeded")
    active = make_task(people["owner"], "Running", "In Progress")
    art = create_artifact(task.pk, "Out", text="hello")
    client.force_login(people["staff"])
    assert client.get(reverse("usertasks:status", args=[task.uuid])).status_code == 200
    detail = client.get(reverse("usertasks:api-detail", args=[task.uuid])).json()
    assert detail["can_delete"] is False
    assert client.get(reverse("usertasks:artifact", args=[art.uuid])).status_code == 200
    assert client.post(reverse("usertasks:delete", args=[task.uuid]), {"confirm": "yes"}).status_code == 403
    assert client.post(reverse("usertasks:api-delete", args=[task.uuid])).status_code == 403
    assert client.post(reverse("usertasks:api-cancel", args=[active.uuid])).status_code == 403
    assert UserTaskStatus.objects.filter(pk=task.pk).exists()
    active.refresh_from_db()
    assert active.state == "In Progress"
    # The policy changes nothing for other non-staff users.
    client.force_login(people["other"])
    assert client.get(reverse("usertasks:status", args=[task.uuid])).status_code == 404
