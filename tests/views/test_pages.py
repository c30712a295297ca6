"""The pages: content, escaping, CSRF, confirmation, pagination and query counts, files."""

import os
import re

import pytest
from django.core.files.base import ContentFile
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tests.tasks_web import make_task
from usertasks.artifacts import create_artifact
from usertasks.models import UserTaskArtifact, UserTaskEvent, UserTaskStatus, artifact_storage

pytestmark = pytest.mark.django_db

HOSTILE = "<script>alert('x')</script>\"'&" + "\u00e9\u4e2d\U0001F600\u202e" + "W" * 300


def test_status_page_shows_progress_accessibly(client, user):
    task = make_task(user, "Export", "In Progress", completed_steps=3, total_steps=4, message="Chapter 3",
                     attempts=1)
    client.force_login(user)
    html = client.get(task.get_absolute_url()).content.decode()
    bar = re.search(r'<div class="ut-progress[^>]*>', html, re.S).group(0)
    assert 'role="progressbar"' in bar and 'aria-valuenow="75"' in bar
    assert 'aria-valuemin="0"' in bar and 'aria-valuemax="100"' in bar
    assert "75%" in html and "3 of 4 steps" in html and "Chapter 3" in html
    assert "Cancel task" in html and "usertasks/usertasks.js" in html
    # JavaScript off: the page reloads itself while the task is active.
    assert '<noscript><meta http-equiv="refresh"' in html
    # The delete form is there but hidden while active.
    assert re.search(r'data-field="delete_form"[^>]*hidden', html)


def test_finished_page_has_no_refresh_and_offers_delete(client, user):
    task = make_task(user, "Export", "Succeeded", completed_steps=4, total_steps=4)
    client.force_login(user)
    html = client.get(task.get_absolute_url()).content.decode()
    assert 'http-equiv="refresh"' not in html
    assert not re.search(r'data-field="delete_form"[^>]*hidden', html)
    assert re.search(r'data-field="cancel_form"[^>]*hidden', html)


def test_traceback_only_for_staff(client, user, django_user_model):
    task = make_task(user, "Broken", "Failed", error="The file is bad.", traceback="Traceback: SECRET_FRAME")
    client.force_login(user)
    html = client.get(task.get_absolute_url()).content.decode()
    assert "The file is bad." in html and "SECRET_FRAME" not in html
    assert client.get(reverse("usertasks:api-detail", args=[task.uuid])).json()["traceback"] is None
    root = django_user_model.objects.create_superuser("root", "r@example.com", "pw")
    client.force_login(root)
    assert "SECRET_FRAME" in client.get(task.get_absolute_url()).content.decode()
    assert "SECRET_FRAME" in client.get(reverse("usertasks:api-detail", args=[task.uuid])).json()["traceback"]


def test_hostile_strings_are_escaped(client, user):
    task = make_task(user, HOSTILE[:255], "Failed", message=HOSTILE[:1000], error=HOSTILE)
    create_artifact(task.pk, HOSTILE, text=HOSTILE)
    create_artifact(task.pk, HOSTILE, url="https://example.com/?q=<script>")
    UserTaskEvent.objects.create(status=task, kind="note", detail=HOSTILE)
    client.force_login(user)
    for url in (task.get_absolute_url(), reverse("usertasks:dashboard")):
        html = client.get(url).content.decode()
        assert "<script>alert" not in html
        assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
        assert "\u4e2d\U0001F600" in html
    data = client.get(reverse("usertasks:api-detail", args=[task.uuid])).json()
    assert data["name"] == HOSTILE[:255] and data["artifacts"][0]["text"] == HOSTILE


def test_text_artifact_is_served_as_plain_text(client, user):
    task = make_task(user, "T", "Succeeded")
    art = create_artifact(task.pk, "Stats", text="<b>bold</b>")
    client.force_login(user)
    response = client.get(reverse("usertasks:artifact", args=[art.uuid]))
    assert response["Content-Type"].startswith("text/plain")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response.content == b"<b>bold</b>"


def test_url_artifact_redirects(client, user):
    task = make_task(user, "T", "Succeeded")
    art = create_artifact(task.pk, "Link", url="https://example.com/report")
    client.force_login(user)
    response = client.get(reverse("usertasks:artifact", args=[art.uuid]))
    assert response.status_code == 302 and response["Location"] == "https://example.com/report"


def test_path_traversal_in_artifact_names_is_harmless(client, user, settings):
    task = make_task(user, "T", "Succeeded")
    art = create_artifact(task.pk, "../../x", file=ContentFile(b"data", name="../../../etc/passwd"))
    stored = art.file.name
    assert ".." not in stored and stored.startswith(f"usertasks/{task.uuid}/")
    assert os.path.realpath(art.file.path).startswith(os.path.realpath(settings.MEDIA_ROOT) + os.sep)
    client.force_login(user)
    response = client.get(reverse("usertasks:artifact", args=[art.uuid]))
    assert response.status_code == 200
    disposition = response["Content-Disposition"]
    assert disposition.startswith("attachment;") and "/" not in disposition and ".." not in disposition
    assert b"".join(response.streaming_content) == b"data"


def test_download_name_with_quotes_and_unicode(client, user):
    task = make_task(user, "T", "Succeeded")
    art = create_artifact(task.pk, "x", file=ContentFile(b"1", name='r\u00e9sum\u00e9 "q";.csv'))
    client.force_login(user)
    response = client.get(reverse("usertasks:artifact", args=[art.uuid]))
    disposition = response["Content-Disposition"]
    assert '"q"' not in disposition and "\n" not in disposition
    assert "filename*=utf-8''" in disposition or "filename=" in disposition


def test_csrf_enforced_on_every_post(user):
    c = Client(enforce_csrf_checks=True)
    c.force_login(user)
    active = make_task(user, "Active", "Pending")
    done = make_task(user, "Done", "Succeeded")
    for name, task in (("cancel", active), ("api-cancel", active), ("delete", done), ("api-delete", done)):
        assert c.post(reverse(f"usertasks:{name}", args=[task.uuid]), {"confirm": "yes"}).status_code == 403
    assert c.delete(reverse("usertasks:api-detail", args=[done.uuid])).status_code == 403
    assert UserTaskStatus.objects.count() == 2
    active.refresh_from_db()
    assert active.state == "Pending"
    # With the token from the page, the same request works.
    html = c.get(active.get_absolute_url()).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    response = c.post(reverse("usertasks:cancel", args=[active.uuid]), {"confirm": "yes", "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    active.refresh_from_db()
    assert active.state == "Canceled"


def test_cancel_and_delete_ask_for_confirmation_without_javascript(client, user):
    active = make_task(user, "Active", "Pending")
    done = make_task(user, "Done", "Succeeded")
    client.force_login(user)
    page = client.post(reverse("usertasks:cancel", args=[active.uuid]))
    assert page.status_code == 200 and b'name="confirm" value="yes"' in page.content
    active.refresh_from_db()
    assert active.state == "Pending"
    page = client.post(reverse("usertasks:delete", args=[done.uuid]))
    assert page.status_code == 200 and UserTaskStatus.objects.filter(pk=done.pk).exists()
    response = client.post(reverse("usertasks:delete", args=[done.uuid]), {"confirm": "yes"})
    assert response.status_code == 302 and response["Location"] == reverse("usertasks:dashboard")


def test_get_on_post_endpoints_is_refused(client, user):
    task = make_task(user, "T", "Succeeded")
    client.force_login(user)
    for name in ("cancel", "delete", "api-cancel", "api-delete"):
        assert client.get(reverse(f"usertasks:{name}", args=[task.uuid])).status_code == 405


def test_active_task_cannot_be_deleted(client, user):
    task = make_task(user, "Busy", "In Progress")
    client.force_login(user)
    assert client.post(reverse("usertasks:api-delete", args=[task.uuid])).status_code == 409
    client.post(reverse("usertasks:delete", args=[task.uuid]), {"confirm": "yes"})
    assert UserTaskStatus.objects.filter(pk=task.pk).exists()


def test_cancel_of_finished_task_is_409(client, user):
    task = make_task(user, "Done", "Succeeded")
    client.force_login(user)
    assert client.post(reverse("usertasks:api-cancel", args=[task.uuid])).status_code == 409


def test_delete_removes_rows_and_files_on_commit(client, user, django_capture_on_commit_callbacks):
    task = make_task(user, "T", "Succeeded")
    child = make_task(user, "Child", "Succeeded", parent=task)
    a = create_artifact(task.pk, "f", file=ContentFile(b"1", name="a.txt"))
    b = create_artifact(child.pk, "g", file=ContentFile(b"2", name="b.txt"))
    storage = artifact_storage()
    assert storage.exists(a.file.name) and storage.exists(b.file.name)
    client.force_login(user)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(reverse("usertasks:api-delete", args=[task.uuid])).status_code == 204
    assert not UserTaskStatus.objects.filter(pk__in=[task.pk, child.pk]).exists()
    assert not UserTaskArtifact.objects.exists()
    assert not storage.exists(a.file.name) and not storage.exists(b.file.name)


def test_dashboard_filters_and_order(client, user):
    names = {}
    for state in ("Pending", "In Progress", "Retrying", "Succeeded", "Failed", "Canceled"):
        names[state] = make_task(user, f"task {state}", state).name
    client.force_login(user)

    def listed(f):
        data = client.get(reverse("usertasks:api-list"), {"filter": f} if f else {}).json()
        return [r["state"] for r in data["results"]]

    assert listed("") == ["Canceled", "Failed", "Succeeded", "Retrying", "In Progress", "Pending"]
    assert set(listed("active")) == {"Pending", "In Progress", "Retrying"}
    assert set(listed("finished")) == {"Succeeded", "Failed", "Canceled"}
    assert listed("failed") == ["Failed"] and listed("canceled") == ["Canceled"]
    html = client.get(reverse("usertasks:dashboard"), {"filter": "failed"}).content.decode()
    assert "task Failed" in html and "task Succeeded" not in html
    assert client.get(reverse("usertasks:api-list"), {"filter": "nope"}).status_code == 400


@override_settings(USERTASKS={"BASE_URL": "http://testserver", "PAGE_SIZE": 3})
def test_dashboard_pagination(client, user):
    for i in range(7):
        make_task(user, f"n{i}")
    client.force_login(user)
    html = client.get(reverse("usertasks:dashboard")).content.decode()
    assert "n6" in html and "n4" in html and "n3" not in html and "Page 1 of 3" in html
    html = client.get(reverse("usertasks:dashboard"), {"page": 3}).content.decode()
    assert "n0" in html and "n1" not in html
    data = client.get(reverse("usertasks:api-list"), {"page": 2}).json()
    assert data["count"] == 7 and data["num_pages"] == 3 and [r["name"] for r in data["results"]] == ["n3", "n2", "n1"]
    # out of range: the last page
    assert client.get(reverse("usertasks:api-list"), {"page": 99}).json()["page"] == 3


@pytest.mark.parametrize("name", ["usertasks:dashboard", "usertasks:api-list"])
def test_query_count_does_not_grow_with_page_size(client, user, name):
    client.force_login(user)

    def count(n):
        UserTaskStatus.objects.all().delete()
        for i in range(n):
            t = make_task(user, f"t{i}", "Succeeded" if i % 2 else "In Progress", total_steps=10, completed_steps=i % 10)
            create_artifact(t.pk, "x", text="y")
        with override_settings(USERTASKS={"BASE_URL": "http://testserver", "PAGE_SIZE": n}):
            client.get(reverse(name))  # warm the session
            with CaptureQueriesContext(connection) as ctx:
                assert client.get(reverse(name)).status_code == 200
        return len(ctx.captured_queries)

    assert count(2) == count(30)


def test_status_page_query_count_is_bounded(client, user):
    task = make_task(user, "T", "Succeeded")
    for i in range(20):
        create_artifact(task.pk, f"a{i}", text="x")
        UserTaskEvent.objects.create(status=task, kind="note", detail=str(i))
    client.force_login(user)
    client.get(task.get_absolute_url())
    with CaptureQueriesContext(connection) as ctx:
        client.get(task.get_absolute_url())
    assert len(ctx.captured_queries) <= 8


def test_event_stream_of_finished_task_sends_one_event(client, user):
    task = make_task(user, "Done", "Succeeded", total_steps=2, completed_steps=2)
    client.force_login(user)
    response = client.get(reverse("usertasks:api-events", args=[task.uuid]))
    assert response["Content-Type"].startswith("text/event-stream")
    body = b"".join(response.streaming_content).decode()
    assert body.startswith("retry: ") and body.count("event: status") == 1
    assert '"state": "Succeeded"' in body


@override_settings(USERTASKS={"BASE_URL": "http://testserver", "LIVE_STREAM_SECONDS": 0})
def test_event_stream_can_be_turned_off(client, user):
    task = make_task(user, "Busy", "In Progress")
    client.force_login(user)
    assert client.get(reverse("usertasks:api-events", args=[task.uuid])).status_code == 204
    assert 'data-stream-url=""' in client.get(task.get_absolute_url()).content.decode()


def test_not_found_page_offers_login_to_anonymous(client, user):
    task = make_task(user, "Mine")
    response = client.get(task.get_absolute_url())
    assert response.status_code == 404 and b"log in" in response.content


def test_base_template_is_configurable(client, user):
    task = make_task(user, "Mine")
    client.force_login(user)
    with override_settings(USERTASKS={"BASE_URL": "http://testserver", "BASE_TEMPLATE": "demo/base.html"}):
        html = client.get(task.get_absolute_url()).content.decode()
    assert "usertasks demo" in html and "Mine" in html


def test_static_files_are_shipped_and_no_cdn(client, user):
    from django.contrib.staticfiles import finders

    assert finders.find("usertasks/usertasks.js") and finders.find("usertasks/usertasks.css")
    task = make_task(user, "Mine")
    client.force_login(user)
    for url in (task.get_absolute_url(), reverse("usertasks:dashboard")):
        html = client.get(url).content.decode()
        assert not re.search(r'(src|href)="(https?:)?//', html)


def test_demo_page_starts_a_task(client, user):
    client.force_login(user)
    assert b"Export a sales report" in client.get("/").content
    response = client.post("/start/export/")
    status = UserTaskStatus.objects.get()
    assert response.status_code == 302 and response["Location"] == status.get_absolute_url()
    assert status.user == user and status.task_class == "export_report"


def test_pages_are_translated(client, user):
    from django.utils import translation

    task = make_task(user, "Export", "In Progress", total_steps=4, completed_steps=1)
    client.force_login(user)
    with translation.override("fr"):
        # No LocaleMiddleware in the test settings: activate the language around the view.
        from django.test import RequestFactory

        from usertasks.views import status_page

        request = RequestFactory().get(task.get_absolute_url())
        request.user = user
        request.session = client.session
        from django.contrib.messages.storage.fallback import FallbackStorage

        request._messages = FallbackStorage(request)
        html = status_page(request, task.uuid).content.decode()
    assert "Annuler la tâche" in html and "En cours" in html and "étape 1 sur 4" in html
