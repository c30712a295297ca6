"""The pages' polish, through the test client: JSON errors from the API (DEBUG on too), strict
query parameters, bidi isolation of user text on pages and in emails, download names without
direction controls, one time format, the outcome of finished dashboard rows, the favicon."""

import re
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from html.parser import HTMLParser

import pytest
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format

from tests.tasks_web import make_task
from usertasks.artifacts import create_artifact
from usertasks.models import UserTaskEvent
from usertasks.notifications import build_message
from usertasks.text import isolate, strip_bidi_controls

pytestmark = pytest.mark.django_db

RLO = "\u202e"
MARK = "MARKER"
ARABIC = "\u062a\u0635\u062f\u064a\u0631"  # "export"


# -- JSON errors -------------------------------------------------------------------------------


def assert_json_error(response, status):
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json", response["Content-Type"]
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and body["detail"]
    assert b"<html" not in response.content.lower()


@pytest.mark.parametrize("debug", [False, True])
def test_api_errors_are_json(client, user, other_user, settings, debug):
    settings.DEBUG = debug
    mine = make_task(user, "Mine", "Succeeded")
    theirs = make_task(other_user, "Theirs", "Succeeded")
    client.force_login(user)
    # 404: another user's task, an unknown task, a malformed uuid, a path that names nothing.
    for path in (reverse("usertasks:api-detail", args=[theirs.uuid]),
                 reverse("usertasks:api-events", args=["00000000-0000-0000-0000-000000000000"]),
                 "/tasks/api/tasks/not-a-uuid/", "/tasks/api/nothing/here/", "/tasks/api/"):
        response = client.get(path)
        assert_json_error(response, 404)
        assert b"urlpatterns" not in response.content and b"usertasks:" not in response.content
    # An API path without its final slash: redirected for GET (as APPEND_SLASH does), else a JSON 404.
    response = client.get(reverse("usertasks:api-detail", args=[mine.uuid]).rstrip("/"))
    assert response.status_code == 301 and response["Location"].endswith(f"/tasks/api/tasks/{mine.uuid}/")
    assert_json_error(client.post(reverse("usertasks:api-cancel", args=[mine.uuid]).rstrip("/")), 404)
    # 405, with Allow.
    response = client.post(reverse("usertasks:api-detail", args=[mine.uuid]))
    assert_json_error(response, 405)
    assert response["Allow"] == "GET, DELETE"
    response = client.get(reverse("usertasks:api-cancel", args=[mine.uuid]))
    assert_json_error(response, 405)
    assert response["Allow"] == "POST"
    response = client.put(reverse("usertasks:api-list"))
    assert_json_error(response, 405)
    # 403: a failed CSRF check; the list without a session.
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    response = strict.post(reverse("usertasks:api-delete", args=[mine.uuid]))
    assert_json_error(response, 403)
    assert "CSRF" in response.json()["detail"]
    assert_json_error(strict.delete(reverse("usertasks:api-detail", args=[mine.uuid])), 403)
    anonymous = Client()
    assert_json_error(anonymous.get(reverse("usertasks:api-list")), 403)
    # Anonymous users, like everyone the policy does not let see a task: 404.
    for path in (reverse("usertasks:api-detail", args=[mine.uuid]), reverse("usertasks:api-events", args=[mine.uuid])):
        assert_json_error(anonymous.get(path), 404)
    assert_json_error(anonymous.post(reverse("usertasks:api-cancel", args=[mine.uuid])), 404)
    # The pages keep their HTML 404.
    assert b"<html" in client.get(theirs.get_absolute_url()).content


def test_page_parameters_are_checked(client, user):
    for i in range(3):
        make_task(user, f"t{i}")
    client.force_login(user)
    url = reverse("usertasks:api-list")
    for params in ({"page_size": 101}, {"page_size": 0}, {"page_size": "x"}, {"page": 0}, {"page": "x"},
                   {"uuid": "nope"}, {"uuid": [str(i) for i in range(101)]}):
        assert_json_error(client.get(url, params), 400)
    assert client.get(url, {"page_size": 100}).json()["page_size"] == 100
    assert client.get(url, {"page_size": 1, "page": 99}).json()["page"] == 3  # the last page
    # The dashboard page stays lenient: a bad number shows the first page.
    assert client.get(reverse("usertasks:dashboard"), {"page": "x", "page_size": 1000}).status_code == 200


def test_csrf_with_the_token_passes(user):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    task = make_task(user, "Busy", "In Progress")
    strict.get(task.get_absolute_url())  # sets the CSRF cookie
    token = strict.cookies["csrftoken"].value
    response = strict.post(reverse("usertasks:api-cancel", args=[task.uuid]), HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200 and response.json()["cancel_requested"] is True


# -- bidi isolation ----------------------------------------------------------------------------


class IsolationChecker(HTMLParser):
    """Records, for every text node holding MARK, whether an enclosing element isolates it
    (``<bdi>`` or a ``dir`` attribute), and the ``<title>`` text."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__()
        self.stack, self.found, self.title = [], [], ""

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append((tag, tag == "bdi" or any(name == "dir" for name, _ in attrs)))

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        tags = [t for t, _ in self.stack]
        if "title" in tags:
            self.title += data
        elif MARK in data and "script" not in tags:
            self.found.append((data[:40], any(isolated for _, isolated in self.stack)))


def hostile(label):
    return f"{ARABIC} {MARK} {label} {RLO}exe.txt"


def test_user_text_is_isolated_on_pages(client, user):
    task = make_task(user, hostile("name"), "Failed", message=hostile("message"), error=hostile("error"))
    create_artifact(task.pk, hostile("text artifact"), text=hostile("text"))
    create_artifact(task.pk, hostile("link artifact"), url="https://example.com/")
    create_artifact(task.pk, hostile("file artifact"), file=ContentFile(b"1", name="a.txt"))
    UserTaskEvent.objects.create(status=task, kind="note", detail=hostile("event"))
    client.force_login(user)
    for url in (task.get_absolute_url(), reverse("usertasks:dashboard")):
        checker = IsolationChecker()
        checker.feed(client.get(url).content.decode())
        assert checker.found, url
        assert all(isolated for _, isolated in checker.found), [text for text, ok in checker.found if not ok]
    # The confirmation page, and the <title> (plain text: Unicode isolates).
    checker = IsolationChecker()
    checker.feed(client.post(reverse("usertasks:delete", args=[task.uuid])).content.decode())
    assert checker.found and all(isolated for _, isolated in checker.found)
    checker = IsolationChecker()
    checker.feed(client.get(task.get_absolute_url()).content.decode())
    assert isolate(task.name) in checker.title


def test_user_text_is_isolated_in_emails(user):
    user.username = f"{ARABIC}{RLO}"
    user.save()
    task = make_task(user, hostile("name"), "Failed", error=hostile("error"))
    message = build_message(task)
    text = message.body
    assert isolate(task.name) in text and isolate(task.error) in text and isolate(user.username) in text
    assert isolate(task.name) in message.subject
    html = message.alternatives[0][0]
    checker = IsolationChecker()
    checker.feed(html)
    assert checker.found and all(isolated for _, isolated in checker.found)
    # Plain left-to-right text in an English email stays free of invisible characters.
    plain = build_message(make_task(user, "Export 7", "Succeeded"))
    assert "Export 7" in plain.subject and "\u2068" not in plain.subject


def test_isolate_cannot_be_closed_early():
    text = "a\u2069b\u2066c"
    out = isolate(text)
    assert out.startswith("\u2068") and out.endswith("\u2069")
    depth = 0
    for ch in out[:-1]:
        depth += ch in "\u2066\u2067\u2068"
        depth -= ch == "\u2069"
        assert depth >= 1  # our isolate stays open until its own PDI
    assert strip_bidi_controls("\u202aa\u202bb\u202cc\u202dd\u202ee\u2066f\u2067g\u2068h\u2069i\u200ej\u200fk\u061cl") == "abcdefghijkl"


def test_download_name_has_no_direction_controls(client, user):
    task = make_task(user, "T", "Succeeded")
    art = create_artifact(task.pk, "f", file=ContentFile(b"MZ", name=f"report{RLO}exe.txt"))
    client.force_login(user)
    response = client.get(reverse("usertasks:artifact", args=[art.uuid]))
    disposition = response["Content-Disposition"]
    assert "reportexe.txt" in disposition, disposition
    assert "202e" not in disposition.lower() and "%E2%80%AE" not in disposition.upper() and RLO not in disposition


# -- times, outcome, favicon, separator ----------------------------------------------------------


def test_times_are_formatted_in_the_locale(client, user, settings):
    moment = datetime(2026, 12, 4, 6, 55, 50, 775839, tzinfo=dt_timezone.utc)
    task = make_task(user, "Timed", "Succeeded", started=moment, finished=moment + timedelta(seconds=3))
    UserTaskEvent.objects.filter(status=task).delete()
    event = UserTaskEvent.objects.create(status=task, kind="note", detail="x")
    UserTaskEvent.objects.filter(pk=event.pk).update(created=moment)
    client.force_login(user)
    html = client.get(task.get_absolute_url()).content.decode()
    visible = re.sub(r"<[^>]+>", " ", html)
    assert "2026-12-04T06:55:50" not in visible  # no raw ISO text anywhere
    expected = date_format(timezone.localtime(moment), "DATETIME_FORMAT")
    assert f'<time datetime="2026-12-04T06:55:50.775Z">{expected}</time>' in html
    history = html[html.index('data-field="events"'):]
    assert f'<time datetime="2026-12-04T06:55:50.775Z">{expected}</time>' in history
    # Another time zone and language: the same element, formatted for them.
    settings.TIME_ZONE = "Europe/Paris"
    from django.utils import translation

    with translation.override("fr"), timezone.override("Europe/Paris"):
        french = date_format(timezone.localtime(moment), "DATETIME_FORMAT")
        from usertasks.templatetags.usertasks_tags import usertasks_time

        assert usertasks_time(moment) == f'<time datetime="2026-12-04T06:55:50.775Z">{french}</time>'
        assert "07:55" in french or "7:55" in french
    # The script formats with the page's language and time zone.
    strings = re.search(r'<script id="ut-strings" type="application/json">(.*?)</script>', html).group(1)
    assert '"language": "en' in strings and '"time_zone": "UTC"' in strings


def test_finished_rows_show_their_outcome(client, user):
    start = timezone.now() - timedelta(seconds=65)
    make_task(user, "Good", "Succeeded", message="step 9 of 9", started=start, finished=start + timedelta(seconds=65))
    make_task(user, "Bad", "Failed", message="step 3 of 9", error="The file is corrupt.\nMore detail")
    make_task(user, "Stopped", "Canceled", message="step 2 of 9")
    make_task(user, "Busy", "In Progress", message="step 4 of 9")
    client.force_login(user)
    html = client.get(reverse("usertasks:dashboard")).content.decode()
    messages = re.findall(r'data-field="message" dir="auto">([^<]*)</div>', html)
    assert messages == ["step 4 of 9", "Canceled", "Failed: The file is corrupt.", "Succeeded in 1 min 5 s"]
    for stale in ("step 9 of 9", "step 3 of 9", "step 2 of 9"):
        assert stale not in html


def test_favicon_is_served_and_linked(client, user):
    from django.contrib.staticfiles import finders

    assert finders.find("usertasks/favicon.svg")
    task = make_task(user, "T")
    client.force_login(user)
    html = client.get(task.get_absolute_url()).content.decode()
    assert '<link rel="icon" href="/static/usertasks/favicon.svg" type="image/svg+xml">' in html


def test_pending_task_has_empty_progress_parts(client, user):
    task = make_task(user, "Waiting", "Pending")
    client.force_login(user)
    html = client.get(task.get_absolute_url()).content.decode()
    # Both parts are empty elements, so the CSS separator (only between non-empty parts) is not drawn.
    assert '<span data-field="percent"></span>' in html and '<span data-field="steps"></span>' in html
    css = open(finders_path("usertasks/usertasks.css")).read()
    assert ".ut-progress-text span:not(:empty) + span:not(:empty)::before" in css


def finders_path(name):
    from django.contrib.staticfiles import finders

    return finders.find(name)
