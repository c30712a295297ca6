"""What a task's page and JSON say about its outcome: a container's failed children (with links
where the viewer may see them), a pipeline's stages, who acted on it, its outcome counters."""

import re

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tests.tasks_web import make_task
from usertasks.models import UserTaskEvent
from usertasks.permissions import OwnerOrSuperuser

pytestmark = pytest.mark.django_db


class StaffSeeContainersOnly(OwnerOrSuperuser):
    """Staff may view every top-level task, but not the subtasks inside them."""

    def visible(self, user, queryset):
        if user.is_authenticated and user.is_active and user.is_staff and not user.is_superuser:
            return queryset.filter(parent__isnull=True)
        return super().visible(user, queryset)


def fan_out(user, failed, succeeded=0):
    container = make_task(
        user, "Grade <course>", "Succeeded", is_container=True,
        children_total=failed + succeeded, children_failed=failed, children_succeeded=succeeded,
        counts={"sent": 90, "skipped": 4, "bounced": 1, "failed": 6},
    )
    for i in range(failed):
        make_task(user, f"Learner {i}", "Failed", parent=container, error=f"No grade for <learner {i}>")
    for i in range(succeeded):
        make_task(user, f"Fine {i}", "Succeeded", parent=container)
    return container


def detail(client, task):
    response = client.get(reverse("usertasks:api-detail", args=[task.uuid]))
    assert response.status_code == 200
    return response.json()


def test_page_and_json_list_the_failed_children_with_links(client, user):
    container = fan_out(user, failed=3, succeeded=2)
    children = {c.name: c for c in container.children.all()}
    client.force_login(user)
    data = detail(client, container)
    failed = data["failed_children"]
    assert failed["count"] == 3 and len(failed["shown"]) == 3
    assert [c["name"] for c in failed["shown"]] == ["Learner 0", "Learner 1", "Learner 2"]
    first = failed["shown"][0]
    assert first["error"] == "No grade for <learner 0>" and first["state"] == "Failed"
    assert first["url"] == children["Learner 0"].get_absolute_url()
    assert data["stages"] is None

    html = client.get(container.get_absolute_url()).content.decode()
    section = re.search(r'<section class="ut-failed-children".*?</section>', html, re.S).group(0)
    assert "Failed subtasks" in section and "3 failed." in section
    assert f'<a href="{children["Learner 1"].get_absolute_url()}">Learner 1</a>' in section
    assert "No grade for &lt;learner 1&gt;" in section and "<learner" not in section
    assert "Fine 0" not in section
    # The child's page is there for whoever the link is shown to.
    assert client.get(first["url"]).status_code == 200


def test_the_first_hundred_and_the_count(client, user):
    container = fan_out(user, failed=130)
    client.force_login(user)
    failed = detail(client, container)["failed_children"]
    assert failed["count"] == 130 and len(failed["shown"]) == 100
    assert [c["name"] for c in failed["shown"][:3]] == ["Learner 0", "Learner 1", "Learner 2"]
    html = client.get(container.get_absolute_url()).content.decode()
    assert "130 failed; the first 100 are listed." in html
    assert "Learner 99<" in html and "Learner 100<" not in html


def test_no_link_where_the_policy_hides_the_child(client, user, django_user_model):
    container = fan_out(user, failed=2)
    staff = django_user_model.objects.create_user("support", "s@example.com", "pw", is_staff=True)
    client.force_login(staff)
    with override_settings(USERTASKS={"PERMISSIONS": "tests.views.test_outcome.StaffSeeContainersOnly"}):
        data = detail(client, container)
        assert [c["url"] for c in data["failed_children"]["shown"]] == [None, None]
        assert [c["name"] for c in data["failed_children"]["shown"]] == ["Learner 0", "Learner 1"]
        html = client.get(container.get_absolute_url()).content.decode()
        assert "Learner 0" in html and "No grade for" in html
        child = container.children.first()
        assert child.get_absolute_url() not in html
        assert client.get(child.get_absolute_url()).status_code == 404


def test_queries_do_not_grow_with_the_children(client, user):
    small, big = fan_out(user, failed=2, succeeded=1), fan_out(user, failed=120, succeeded=40)
    client.force_login(user)

    def queries(url):
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return len(captured)

    for url in (lambda t: t.get_absolute_url(), lambda t: reverse("usertasks:api-detail", args=[t.uuid])):
        assert queries(url(small)) == queries(url(big))


def test_pipeline_stages_with_their_states(client, user):
    pipe = make_task(user, "Publish", "Failed", is_container=True, children_total=3, children_succeeded=1,
                     children_failed=1, children_skipped=1, options={"pipeline": {"stages": 3}},
                     error="A stage failed: Upload: disk full")
    make_task(user, "Export", "Succeeded", parent=pipe, options={"stage": 0})
    make_task(user, "Upload", "Failed", parent=pipe, error="disk full", options={"stage": 1})
    make_task(user, "Notify", "Canceled", parent=pipe, options={"stage": 2})
    client.force_login(user)
    data = detail(client, pipe)
    assert [(s["name"], s["state"], s["state_text"]) for s in data["stages"]] == [
        ("Export", "Succeeded", "Succeeded"), ("Upload", "Failed", "Failed"), ("Notify", "Canceled", "Canceled"),
    ]
    assert data["stages"][1]["error"] == "disk full"
    assert all(s["url"] for s in data["stages"])
    assert data["failed_children"]["count"] == 1
    html = client.get(pipe.get_absolute_url()).content.decode()
    stages = re.search(r'<section class="ut-stages">.*?</section>', html, re.S).group(0)
    names = re.findall(r"<li><a [^>]*>([^<]+)</a> <span class=\"ut-state ut-state-(\w+)\">", stages)
    assert names == [("Export", "succeeded"), ("Upload", "failed"), ("Notify", "canceled")]
    assert "disk full" in stages


def test_events_show_who_acted(client, user, django_user_model, redis):
    task = make_task(user, "Export", "Pending")
    client.force_login(user)
    page = client.get(task.get_absolute_url())
    token = page.cookies["csrftoken"].value if "csrftoken" in page.cookies else None
    response = client.post(reverse("usertasks:cancel", args=[task.uuid]), {"confirm": "yes", "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    event = UserTaskEvent.objects.get(status=task, kind="canceled")
    assert event.actor == user
    events = detail(client, task)["events"]
    assert [(e["kind"], e["actor"]) for e in events if e["kind"] == "canceled"] == [("canceled", "alice")]
    html = client.get(task.get_absolute_url()).content.decode()
    assert re.search(r'Canceled</span> <span class="ut-event-actor">by <bdi>alice</bdi></span>', html)
    # Events without an actor say nothing of one.
    UserTaskEvent.objects.create(status=task, kind="note", detail="x")
    assert detail(client, task)["events"][-1]["actor"] is None


def test_counts_in_order_on_the_page_and_in_the_json(client, user):
    container = fan_out(user, failed=0, succeeded=1)
    plain = make_task(user, "Mail", "Succeeded", counts={"sent": 3, "succeeded": 2})
    client.force_login(user)
    assert list(detail(client, container)["counts"].items()) == [
        ("failed", 6), ("skipped", 4), ("bounced", 1), ("sent", 90)
    ]
    assert detail(client, plain)["counts"] == {"succeeded": 2, "sent": 3}
    html = client.get(container.get_absolute_url()).content.decode()
    counts = re.search(r'<dl class="ut-facts" data-field="counts">(.*?)</dl>', html, re.S).group(1)
    assert re.findall(r"<dt>([^<]+)</dt><dd>(\d+)</dd>", counts) == [
        ("Failed", "6"), ("Skipped", "4"), ("Bounced", "1"), ("Sent", "90")
    ]
    # A task that counts nothing has the section hidden, and no failed children's either.
    bare = make_task(user, "Bare", "Succeeded")
    html = client.get(bare.get_absolute_url()).content.decode()
    assert re.search(r'data-field="counts_box" hidden', html)
    assert "ut-failed-children" not in html and detail(client, bare)["failed_children"] is None


def test_the_new_fields_match_the_schema(client, user):
    import yaml

    from tests.test_api import SCHEMA_PATH, validate

    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        openapi = yaml.safe_load(fh)
    container = fan_out(user, failed=2, succeeded=1)
    pipe = make_task(user, "Publish", "In Progress", is_container=True, children_total=1,
                     options={"pipeline": {"stages": 1}})
    make_task(user, "Export", "Pending", parent=pipe)
    task = make_task(user, "Export", "Pending")
    UserTaskEvent.objects.create(status=task, kind="cancel_requested", actor=user)
    client.force_login(user)
    for t in (container, pipe, task):
        validate(openapi, "TaskDetail", detail(client, t))
    bad = detail(client, container)
    bad["counts"]["sent"] = -1
    with pytest.raises(Exception, match="minimum"):
        validate(openapi, "TaskDetail", bad)
