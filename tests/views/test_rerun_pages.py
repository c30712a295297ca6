"""The "Run again" button, its confirmation page (no JavaScript needed) and ``api-rerun``."""

import re

import pytest
import yaml
from django.test import Client, override_settings
from django.urls import reverse

from tests import tasks_rerun
from tests.helpers import wait_final
from tests.test_api import SCHEMA_PATH, validate
from tests.test_sending import dead_broker  # noqa: F401  (a fixture)
from tests.tasks_web import make_task
from usertasks.models import EventKind, UserTaskEvent, UserTaskStatus
from usertasks.permissions import OwnerOrSuperuser
from usertasks.states import State

pytestmark = pytest.mark.django_db(transaction=True)


class ViewOnlyStaff(OwnerOrSuperuser):
    """Staff may view every task, and run again none but their own."""

    def visible(self, user, queryset):
        if user.is_authenticated and user.is_staff:
            return queryset
        return super().visible(user, queryset)


class NoRerunMethod:
    """A policy written before ``can_rerun`` existed: its ``can_cancel`` answers."""

    def visible(self, user, queryset):
        return queryset.visible_to(user)

    def can_cancel(self, user, status):
        return user.username == "alice"

    can_delete = can_download = can_cancel

    def can_see_traceback(self, user, status):
        return False


def failed_task(user, label="page"):
    status = tasks_rerun.fails_once.send_for(user, label, 2)
    UserTaskStatus.objects.filter(pk=status.pk).update(state=State.FAILED, error="first run fails")
    status.refresh_from_db()
    return status


def counts():
    return UserTaskStatus.objects.count(), UserTaskEvent.objects.count()


def test_finished_page_offers_run_again_active_page_hides_it(client, user, redis):
    client.force_login(user)
    done = failed_task(user)
    html = client.get(done.get_absolute_url()).content.decode()
    form = re.search(r'<form[^>]*data-field="rerun_form"[^>]*>', html).group(0)
    assert f'action="{reverse("usertasks:rerun", args=[done.uuid])}"' in form and "hidden" not in form
    assert "Run again" in html
    assert client.get(reverse("usertasks:api-detail", args=[done.uuid])).json()["can_rerun"] is True

    active = tasks_rerun.fails_once.send_for(user, "active")
    html = client.get(active.get_absolute_url()).content.decode()
    assert re.search(r'data-field="rerun_form"[^>]*hidden', html)
    assert client.get(reverse("usertasks:api-detail", args=[active.uuid])).json()["can_rerun"] is False


def test_button_hidden_where_rerun_cannot_work(client, user):
    client.force_login(user)
    secret = tasks_rerun.sign_in.send_for(user, "alice", "pw")
    UserTaskStatus.objects.filter(pk=secret.pk).update(state=State.SUCCEEDED)
    manual = make_task(user, "Made by hand", "Succeeded")  # no stored input
    for status in (secret, manual):
        html = client.get(status.get_absolute_url()).content.decode()
        assert re.search(r'data-field="rerun_form"[^>]*hidden', html)


def test_confirmation_without_javascript_then_run(user, worker):
    c = Client(enforce_csrf_checks=True)
    c.force_login(user)
    done = wait_final(tasks_rerun.fails_once.send_for(user, "nojs", 5))
    assert done.state == State.FAILED
    url = reverse("usertasks:rerun", args=[done.uuid])

    # The button's form posts without confirm=yes when JavaScript is off: the confirmation page.
    page = c.get(done.get_absolute_url())
    token = page.cookies["csrftoken"].value
    confirm = c.post(url, {"confirm": "", "csrfmiddlewaretoken": token})
    assert confirm.status_code == 200
    html = confirm.content.decode()
    assert "Run the task again?" in html and 'name="confirm" value="yes"' in html
    assert 'name="csrfmiddlewaretoken"' in html and f'action="{url}"' in html
    # A GET of the URL shows the same page.
    assert "Run the task again?" in c.get(url).content.decode()
    assert UserTaskStatus.objects.filter(rerun_of=done).count() == 0

    response = c.post(url, {"confirm": "yes", "csrfmiddlewaretoken": token})
    again = UserTaskStatus.objects.get(rerun_of=done)
    assert response.status_code == 302 and response["Location"] == again.get_absolute_url()
    assert "The task was started again." in c.get(response["Location"]).content.decode()
    assert wait_final(again).state == State.SUCCEEDED
    assert again.artifacts.get().text == "nojs:5:csv"
    assert done.events.get(kind=EventKind.RERUN).actor == user


def test_rerun_post_needs_csrf(user, redis):
    c = Client(enforce_csrf_checks=True)
    c.force_login(user)
    done = failed_task(user)
    before = counts()
    assert c.post(reverse("usertasks:rerun", args=[done.uuid]), {"confirm": "yes"}).status_code == 403
    assert c.post(reverse("usertasks:api-rerun", args=[done.uuid])).status_code == 403
    assert counts() == before


def test_other_users_and_anonymous_get_404(client, user, other_user, redis):
    done = failed_task(user)
    before = counts()
    for who in (other_user, None):
        if who is None:
            client.logout()
        else:
            client.force_login(who)
        assert client.get(reverse("usertasks:rerun", args=[done.uuid])).status_code == 404
        assert client.post(reverse("usertasks:rerun", args=[done.uuid]), {"confirm": "yes"}).status_code == 404
        response = client.post(reverse("usertasks:api-rerun", args=[done.uuid]))
        assert response.status_code == 404
    assert counts() == before


@override_settings(USERTASKS={"PERMISSIONS": "tests.views.test_rerun_pages.ViewOnlyStaff"})
def test_viewer_without_can_rerun_gets_403(client, user, django_user_model, redis):
    staff = django_user_model.objects.create_user("staff", "s@example.com", "pw", is_staff=True)
    done = failed_task(user)
    client.force_login(staff)
    html = client.get(done.get_absolute_url()).content.decode()
    assert re.search(r'data-field="rerun_form"[^>]*hidden', html)
    before = counts()
    assert client.get(reverse("usertasks:rerun", args=[done.uuid])).status_code == 403
    assert client.post(reverse("usertasks:rerun", args=[done.uuid]), {"confirm": "yes"}).status_code == 403
    response = client.post(reverse("usertasks:api-rerun", args=[done.uuid]))
    assert response.status_code == 403 and response.json() == {"detail": "You may not run this task again."}
    assert counts() == before


@override_settings(USERTASKS={"PERMISSIONS": "tests.views.test_rerun_pages.NoRerunMethod"})
def test_policy_without_can_rerun_answers_with_can_cancel(client, user, other_user, redis):
    mine = failed_task(user, "mine")
    client.force_login(user)
    assert client.post(reverse("usertasks:api-rerun", args=[mine.uuid])).status_code == 201
    theirs = failed_task(other_user, "theirs")
    client.force_login(other_user)
    assert client.post(reverse("usertasks:api-rerun", args=[theirs.uuid])).status_code == 403


def test_page_refusals_say_why_and_write_nothing(client, user, redis):
    client.force_login(user)
    active = tasks_rerun.fails_once.send_for(user, "busy")
    gone = failed_task(user, "gone")
    UserTaskStatus.objects.filter(pk=gone.pk).update(task_class="no_such_actor")
    unbound = failed_task(user, "unbound")
    before = counts()
    response = client.get(reverse("usertasks:rerun", args=[active.uuid]), follow=True)
    assert "Only a finished task can be run again." in response.content.decode()
    assert response.redirect_chain[-1][0] == active.get_absolute_url()
    response = client.post(reverse("usertasks:rerun", args=[active.uuid]), {"confirm": "yes"}, follow=True)
    assert "Only a finished task can be run again." in response.content.decode()
    # The reason shows at once (before the confirmation), and again if the form is posted anyway.
    for data in (None, {"confirm": "yes"}):
        url = reverse("usertasks:rerun", args=[gone.uuid])
        response = client.post(url, data, follow=True) if data else client.get(url, follow=True)
        assert "&#x27;no_such_actor&#x27; is not registered on the broker" in response.content.decode()
        assert response.redirect_chain[-1][0] == gone.get_absolute_url()
    assert counts() == before
    # The arguments stop fitting between the confirmation page and the POST.
    assert client.get(reverse("usertasks:rerun", args=[unbound.uuid])).status_code == 200
    UserTaskStatus.objects.filter(pk=unbound.pk).update(arguments={"args": [], "kwargs": {"nope": 1}})
    response = client.post(reverse("usertasks:rerun", args=[unbound.uuid]), {"confirm": "yes"}, follow=True)
    assert "no longer fit fails_once" in response.content.decode()
    assert counts() == before


def test_rerun_only_takes_get_and_post(client, user, redis):
    client.force_login(user)
    done = failed_task(user)
    assert client.put(reverse("usertasks:rerun", args=[done.uuid])).status_code == 405
    assert client.get(reverse("usertasks:api-rerun", args=[done.uuid])).status_code == 405


# -- the JSON API -----------------------------------------------------------------------------------


def test_api_rerun_returns_the_new_task(client, user, worker):
    client.force_login(user)
    done = wait_final(tasks_rerun.fails_once.send_for(user, "api"))
    response = client.post(reverse("usertasks:api-rerun", args=[done.uuid]))
    assert response.status_code == 201
    data = response.json()
    again = UserTaskStatus.objects.get(rerun_of=done)
    assert data["uuid"] == str(again.uuid) and data["rerun_of"] == str(done.uuid)
    assert data["name"] == "Fails once api" and data["state"] in ("Pending", "In Progress", "Succeeded")
    assert response["Location"] == reverse("usertasks:api-detail", args=[again.uuid])
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        validate(yaml.safe_load(fh), "TaskDetail", data)
    assert wait_final(again).state == State.SUCCEEDED
    detail = client.get(reverse("usertasks:api-detail", args=[done.uuid])).json()
    assert detail["rerun_of"] is None
    assert "rerun" in [e["kind"] for e in detail["events"]]  # (a "notified" event may follow)


def test_api_rerun_errors(client, user, redis):
    client.force_login(user)
    active = tasks_rerun.fails_once.send_for(user, "api-busy")
    unbound = failed_task(user, "api-unbound")
    UserTaskStatus.objects.filter(pk=unbound.pk).update(arguments={"args": [1, 2, 3, 4], "kwargs": {}})
    secret = tasks_rerun.sign_in.send_for(user, "alice", "pw")
    UserTaskStatus.objects.filter(pk=secret.pk).update(state=State.SUCCEEDED)
    before = counts()
    for status, detail in (
        (active, "Only a finished task can be run again; this one is Pending."),
        (unbound, "no longer fit fails_once"),
        (secret, "sensitive arguments (password) were not stored"),
    ):
        response = client.post(reverse("usertasks:api-rerun", args=[status.uuid]))
        assert response.status_code == 409 and response["Content-Type"] == "application/json"
        assert detail in response.json()["detail"]
    assert counts() == before


def test_api_rerun_of_a_unique_task_joins_the_active_one(client, user, redis):
    client.force_login(user)
    done = tasks_rerun.unique_job.send_for(user, "api-u")
    UserTaskStatus.objects.filter(pk=done.pk).update(state=State.SUCCEEDED, unique_key=None)
    active = tasks_rerun.unique_job.send_for(user, "api-u")
    response = client.post(reverse("usertasks:api-rerun", args=[done.uuid]))
    assert response.status_code == 200 and response.json()["uuid"] == str(active.uuid)
    page = client.post(reverse("usertasks:rerun", args=[done.uuid]), {"confirm": "yes"})
    assert page["Location"] == active.get_absolute_url()


def test_broker_down_at_rerun_says_so(client, user, dead_broker):
    import dramatiq

    server, broker, actor = dead_broker
    dramatiq.get_broker().declare_actor(actor)  # found by its name; sent through its own broker
    client.force_login(user)
    done = actor.send_for(user, label="down")
    UserTaskStatus.objects.filter(pk=done.pk).update(state=State.FAILED)
    server.stop()
    response = client.post(reverse("usertasks:rerun", args=[done.uuid]), {"confirm": "yes"}, follow=True)
    assert response.redirect_chain[-1][0] == done.get_absolute_url()
    assert "Could not send usertasks_tests_down_noop to the broker" in response.content.decode()
    api = client.post(reverse("usertasks:api-rerun", args=[done.uuid]))
    assert api.status_code == 503 and "Could not send" in api.json()["detail"]
    # The tasks that could not be sent are Failed, not left Pending.
    reruns = UserTaskStatus.objects.filter(rerun_of=done)
    assert reruns.count() == 2
    assert set(reruns.values_list("state", flat=True)) == {State.FAILED}
