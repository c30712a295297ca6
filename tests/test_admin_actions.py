"""The admin's actions (cancel_tasks, rerun_tasks, delete_tasks) and its safe per-row delete."""

import re

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.core.files.base import ContentFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from usertasks.artifacts import create_artifact
from usertasks.models import EventKind, UserTaskArtifact, UserTaskEvent, UserTaskStatus, artifact_storage
from usertasks.states import State

from . import tasks, tasks_rerun
from .helpers import wait_final, wait_for
from .tasks_web import make_task

pytestmark = pytest.mark.django_db(transaction=True)

LIST = reverse("admin:usertasks_usertaskstatus_changelist")


@pytest.fixture
def boss(django_user_model):
    return django_user_model.objects.create_superuser("boss", "boss@example.com", "pw")


@pytest.fixture
def admin_client(client, boss):
    client.force_login(boss)
    return client


def act(client, action, rows, confirm=True):
    data = {"action": action, "index": 0, ACTION_CHECKBOX_NAME: [r.pk for r in rows]}
    if confirm:
        data["post"] = "yes"
    return client.post(LIST, data, follow=confirm)


def messages_of(response):
    return [str(m) for m in response.context["messages"]]


def failed(user, label):
    status = tasks_rerun.fails_once.send_for(user, label)
    UserTaskStatus.objects.filter(pk=status.pk).update(state=State.FAILED)
    status.refresh_from_db()
    return status


def test_actions_offered_and_delete_selected_is_not(admin_client, user):
    make_task(user, "One", "Succeeded")
    html = admin_client.get(LIST).content.decode()
    offered = re.findall(r'<option value="([a-z_]+)"', html)
    assert {"cancel_tasks", "rerun_tasks", "delete_tasks"} <= set(offered)
    assert "delete_selected" not in offered
    before = UserTaskStatus.objects.count()
    response = admin_client.post(
        LIST, {"action": "delete_selected", "index": 0, ACTION_CHECKBOX_NAME: [UserTaskStatus.objects.get().pk],
               "post": "yes"}
    )
    assert response.status_code in (200, 302)
    assert UserTaskStatus.objects.count() == before


def test_actions_follow_django_permissions(client, user, django_user_model):
    staff = django_user_model.objects.create_user("staff", "s@example.com", "pw", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_usertaskstatus", content_type__app_label="usertasks"))
    make_task(user, "One", "Succeeded")
    client.force_login(staff)
    offered = set(re.findall(r'<option value="([a-z_]+)"', client.get(LIST).content.decode()))
    assert not offered & {"cancel_tasks", "rerun_tasks", "delete_tasks"}
    staff.user_permissions.add(Permission.objects.get(codename="change_usertaskstatus", content_type__app_label="usertasks"))
    staff = django_user_model.objects.get(pk=staff.pk)  # a fresh permission cache
    client.force_login(staff)
    offered = set(re.findall(r'<option value="([a-z_]+)"', client.get(LIST).content.decode()))
    assert {"cancel_tasks", "rerun_tasks"} <= offered and "delete_tasks" not in offered
    # Posting an action not offered does nothing.
    row = UserTaskStatus.objects.get()
    act(client, "delete_tasks", [row])
    assert UserTaskStatus.objects.filter(pk=row.pk).exists()


def test_cancel_tasks_confirms_then_cancels_only_active_ones(admin_client, user, boss, worker):
    running = tasks.slow_steps.send_for(user, 600, 0.05, label="admin-cancel")
    wait_for(lambda: UserTaskStatus.objects.get(pk=running.pk).state == State.IN_PROGRESS, message="a start")
    pending = make_task(user, "Waiting", "Pending")
    done = make_task(user, "Done", "Succeeded")

    page = act(admin_client, "cancel_tasks", [running, pending, done], confirm=False)
    html = page.content.decode()
    assert page.status_code == 200 and "Cancel these tasks?" in html
    assert "This acts on 2 tasks" in html and "1 selected task is skipped" in html
    assert UserTaskStatus.objects.get(pk=pending.pk).state == State.PENDING  # nothing yet

    response = act(admin_client, "cancel_tasks", [running, pending, done])
    assert messages_of(response) == ["Canceled 2 tasks; 1 skipped: already finished (1)."]
    assert UserTaskStatus.objects.get(pk=pending.pk).state == State.CANCELED
    assert wait_final(running).state == State.CANCELED
    assert running.canceled_by_id == boss.pk
    assert UserTaskStatus.objects.get(pk=done.pk).state == State.SUCCEEDED


def test_rerun_tasks_acts_on_finished_rerunnable_ones_and_says_why_not(admin_client, user, worker):
    broken = wait_final(tasks_rerun.fails_once.send_for(user, "admin-rerun"))
    also = failed(user, "admin-rerun-2")
    active = make_task(user, "Busy", "In Progress")
    manual = make_task(user, "No input", "Failed")
    gone = failed(user, "admin-gone")
    UserTaskStatus.objects.filter(pk=gone.pk).update(task_class="removed_actor")

    response = act(admin_client, "rerun_tasks", [broken, also, active, manual, gone])
    (text,) = messages_of(response)
    assert text.startswith("Started 2 tasks again; 3 skipped: ")
    assert "not finished (1)" in text and "was not stored, so it cannot be run again (1)" in text
    assert "'removed_actor' is not registered on the broker" in text
    assert response.context["messages"]._loaded_messages[0].level_tag == "warning"
    again = UserTaskStatus.objects.get(rerun_of=broken)
    assert wait_final(again).state == State.SUCCEEDED
    assert again.user_id == user.pk
    assert UserTaskStatus.objects.filter(rerun_of=also).count() == 1
    assert broken.events.get(kind=EventKind.RERUN).actor.username == "boss"


def test_rerun_tasks_all_legal_is_a_success_message(admin_client, user, redis):
    rows = [failed(user, f"ok-{i}") for i in range(2)]
    response = act(admin_client, "rerun_tasks", rows)
    assert messages_of(response) == ["Started 2 tasks again."]
    assert response.context["messages"]._loaded_messages[0].level_tag == "success"


def test_delete_tasks_deletes_finished_ones_with_their_files(admin_client, user):
    done = make_task(user, "Done", "Succeeded")
    art = create_artifact(done.pk, "Report", file=ContentFile(b"a,b\n", name="report.csv"))
    child = make_task(user, "Child", "Failed", parent=done)
    child_art = create_artifact(child.pk, "Part", file=ContentFile(b"1", name="part.csv"))
    active = make_task(user, "Busy", "In Progress")
    active_art = create_artifact(active.pk, "Partial", file=ContentFile(b"2", name="partial.csv"))
    storage = artifact_storage()
    names = [art.file.name, child_art.file.name, active_art.file.name]
    assert all(storage.exists(n) for n in names)

    page = act(admin_client, "delete_tasks", [done, active], confirm=False)
    assert "Delete these tasks?" in page.content.decode() and "This acts on 1 task" in page.content.decode()
    assert UserTaskStatus.objects.filter(pk=done.pk).exists()

    response = act(admin_client, "delete_tasks", [done, active])
    assert messages_of(response) == ["Deleted 1 task; 1 skipped: still active (1)."]
    assert not UserTaskStatus.objects.filter(pk__in=[done.pk, child.pk]).exists()
    assert not UserTaskArtifact.objects.filter(pk__in=[art.pk, child_art.pk]).exists()
    assert not storage.exists(names[0]) and not storage.exists(names[1])
    assert UserTaskStatus.objects.filter(pk=active.pk).exists() and storage.exists(names[2])


def test_confirmation_with_nothing_legal_offers_no_button(admin_client, user):
    active = make_task(user, "Busy", "Pending")
    html = act(admin_client, "delete_tasks", [active], confirm=False).content.decode()
    assert "nothing would be done" in html and "Yes, I’m sure" not in html


def test_per_row_delete_refuses_active_tasks(admin_client, user):
    active = make_task(user, "Busy", "In Progress")
    url = reverse("admin:usertasks_usertaskstatus_delete", args=[active.pk])
    assert admin_client.get(url).status_code == 403
    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert UserTaskStatus.objects.filter(pk=active.pk).exists()
    change = admin_client.get(reverse("admin:usertasks_usertaskstatus_change", args=[active.pk])).content.decode()
    assert url not in change  # no Delete link on an active task's page


def test_per_row_delete_of_a_finished_task_removes_its_files(admin_client, user):
    done = make_task(user, "Done", "Failed")
    art = create_artifact(done.pk, "Report", file=ContentFile(b"x", name="out.txt"))
    for k in range(3):
        make_task(user, f"Child {k}", "Succeeded", parent=done)
    UserTaskEvent.objects.create(status=done, kind=EventKind.NOTE, detail="hello")
    storage = artifact_storage()
    url = reverse("admin:usertasks_usertaskstatus_delete", args=[done.pk])
    page = admin_client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    # Counted, not listed one by one: 4 statuses (the task and its children), 1 artifact, 1 event.
    assert "<li>User task statuses: 4</li>" in html
    assert "<li>User task artifacts: 1</li>" in html and "<li>User task events: 1</li>" in html
    assert '<ul id="deleted-objects">\t<li>Done (Failed)</li></ul>' in html
    response = admin_client.post(url, {"post": "yes"})
    assert response.status_code == 302
    assert not UserTaskStatus.objects.filter(user=user).exists()
    assert not storage.exists(art.file.name)


def test_changelist_queries_do_not_grow_with_rows(admin_client, user, other_user):
    make_task(user, "first", "Succeeded")

    def queries():
        with CaptureQueriesContext(connection) as ctx:
            response = admin_client.get(LIST)
        assert response.status_code == 200
        return len(ctx.captured_queries), response

    one, _ = queries()
    original = UserTaskStatus.objects.get()
    for i in range(19):
        make_task(other_user, f"row {i}", "Failed", rerun_of=original, canceled_by=user,
                  parent=original if i % 2 else None)
    twenty, response = queries()
    assert "row 18" in response.content.decode()
    assert twenty == one


def test_change_page_shows_the_input_and_the_original(admin_client, user, redis):
    original = failed(user, "shown")
    again = original.rerun(by=user)
    html = admin_client.get(reverse("admin:usertasks_usertaskstatus_change", args=[again.pk])).content.decode()
    assert "&quot;shown&quot;" in html  # the stored arguments, as JSON
    assert reverse("admin:usertasks_usertaskstatus_change", args=[original.pk]) in html  # rerun_of, linked
    html = admin_client.get(reverse("admin:usertasks_usertaskstatus_change", args=[original.pk])).content.decode()
    assert "Run again" in html and str(again.uuid) in html  # the rerun event
