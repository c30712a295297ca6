"""The read-only admin: list with filters and search, detail with artifacts and events, no N+1."""

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from usertasks.models import EventKind, UserTaskArtifact, UserTaskEvent, UserTaskStatus
from usertasks.states import State

pytestmark = pytest.mark.django_db

LIST = reverse("admin:usertasks_usertaskstatus_changelist")


@pytest.fixture
def admin_client(client, django_user_model):
    boss = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw")
    client.force_login(boss)
    return client


def make_tasks(user, n, *, prefix="task", state=State.SUCCEEDED, events=2, artifacts=1, **fields):
    rows = []
    for i in range(n):
        row = UserTaskStatus.objects.create(
            user=user, task_id=f"{prefix}-{i}-{uuid.uuid4().hex}", task_class="tests.export",
            name=f"{prefix} {i}", state=state, total_steps=10, completed_steps=i % 11, **fields,
        )
        UserTaskEvent.objects.bulk_create(
            [UserTaskEvent(status=row, kind=EventKind.STARTED, attempt=k + 1, actor=user) for k in range(events)]
        )
        UserTaskArtifact.objects.bulk_create(
            [UserTaskArtifact(status=row, name=f"note {k}", text="t") for k in range(artifacts)]
        )
        rows.append(row)
    return rows


def changelist_queries(client, query=""):
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(LIST + query)
    assert response.status_code == 200
    return len(ctx.captured_queries), response


def test_changelist_renders_with_filters_and_search(admin_client, user, other_user):
    make_tasks(user, 3, prefix="alice-export")
    make_tasks(other_user, 2, prefix="bob-report", state=State.FAILED, error="Disk full")
    response = admin_client.get(LIST)
    assert response.status_code == 200
    body = response.content.decode()
    for name in ("alice-export 0", "alice-export 2", "bob-report 1"):
        assert name in body
    assert "2/10 (100%)" in body  # a succeeded task is complete
    assert "1/10 (10%)" in body

    failed = admin_client.get(LIST + "?state__exact=Failed").content.decode()
    assert "bob-report 0" in failed and "alice-export 0" not in failed

    by_user = admin_client.get(LIST + "?q=alice").content.decode()
    assert "alice-export 1" in by_user and "bob-report" not in by_user
    by_email = admin_client.get(LIST + "?q=bob@example.com").content.decode()
    assert "bob-report 0" in by_email and "alice-export" not in by_email

    row = UserTaskStatus.objects.get(name="bob-report 1")
    by_uuid = admin_client.get(LIST + f"?q={row.uuid}").content.decode()
    assert "bob-report 1" in by_uuid and "bob-report 0" not in by_uuid

    for query in ("?task_class__exact=tests.export", "?backend__exact=dramatiq", "?is_container__exact=0",
                  f"?created__year={row.created.year}"):
        assert admin_client.get(LIST + query).status_code == 200


def test_change_page_shows_artifacts_events_and_traceback(admin_client, user):
    (row,) = make_tasks(user, 1, prefix="detail", state=State.FAILED, events=3, artifacts=2,
                        error="Bad input", traceback="Traceback (most recent call last):\n  boom")
    response = admin_client.get(reverse("admin:usertasks_usertaskstatus_change", args=[row.pk]))
    assert response.status_code == 200
    body = response.content.decode()
    assert "note 0" in body and "note 1" in body
    assert body.count("Started") >= 3
    assert "Bad input" in body and "Traceback (most recent call last)" in body


def test_admin_is_read_only(admin_client, user):
    (row,) = make_tasks(user, 1, prefix="ro")
    assert admin_client.get(reverse("admin:usertasks_usertaskstatus_add")).status_code == 403
    url = reverse("admin:usertasks_usertaskstatus_change", args=[row.pk])
    response = admin_client.post(url, {"name": "renamed"})
    assert response.status_code == 403
    assert UserTaskStatus.objects.get(pk=row.pk).name == "ro 0"


def test_changelist_has_no_n_plus_one(admin_client, user, other_user):
    make_tasks(user, 2, prefix="few")
    few, _ = changelist_queries(admin_client)
    make_tasks(other_user, 25, prefix="many", events=3, artifacts=2)
    many, response = changelist_queries(admin_client)
    assert "many 24" in response.content.decode()
    assert many == few
    # Same with a filter and a search.
    assert changelist_queries(admin_client, "?state__exact=Succeeded&q=many")[0] == few


def test_change_page_query_count_does_not_grow_with_events(admin_client, user):
    small, big = make_tasks(user, 1, prefix="small", events=1, artifacts=1) + make_tasks(
        user, 1, prefix="big", events=30, artifacts=10
    )

    def count(row):
        with CaptureQueriesContext(connection) as ctx:
            assert admin_client.get(reverse("admin:usertasks_usertaskstatus_change", args=[row.pk])).status_code == 200
        return len(ctx.captured_queries)

    count(small)  # warms the caches the page uses (content types) whatever ran before
    assert count(big) == count(small)
