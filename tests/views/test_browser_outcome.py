"""Headless Chromium: a container's page shows its outcome counters, its failed subtasks and
who acted as they change, without a reload (the page script renders the live JSON)."""

import pytest
from django.utils import timezone

from tests.tasks_web import make_task
from usertasks.models import UserTaskEvent

from .test_browser import browser, close_db_connections, shot  # noqa: F401  (the fixture)

pytestmark = pytest.mark.django_db(transaction=True)


def test_outcome_follows_the_live_updates(django_db_setup, browser, live_server, user, tmp_path):  # noqa: F811
    container = make_task(user, "Bulk <email>", "In Progress", is_container=True, children_total=4, total_steps=4,
                          attempts=1)
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(30000)
    page.goto(live_server.url + "/accounts/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "pw")
    page.click("button[type=submit]")
    page.goto(live_server.url + container.get_absolute_url())
    page.evaluate("window.__no_reload = 1")
    assert page.is_hidden("[data-field=counts_box]") and page.is_hidden("[data-field=failed_box]")

    child = make_task(user, "Batch <3>", "Failed", parent=container, error="SMTP said <no>")
    type(container).objects.filter(pk=container.pk).update(
        counts={"sent": 120, "failed": 3, "skipped": 2}, children_failed=1, completed_steps=1,
        modified=timezone.now(),
    )
    page.wait_for_function("() => !document.querySelector('[data-field=counts_box]').hidden")
    assert page.inner_text("[data-field=counts]").split() == ["Failed", "3", "Skipped", "2", "Sent", "120"]
    page.wait_for_function("() => !document.querySelector('[data-field=failed_box]').hidden")
    assert page.inner_text("[data-field=failed_count]") == "1 failed."
    link = page.locator("[data-field=failed_children] a")
    assert link.inner_text() == "Batch <3>" and link.get_attribute("href") == child.get_absolute_url()
    assert "SMTP said <no>" in page.inner_text("[data-field=failed_children]")

    UserTaskEvent.objects.create(status=container, kind="cancel_requested", actor=user)
    type(container).objects.filter(pk=container.pk).update(cancel_requested=timezone.now(), modified=timezone.now())
    page.wait_for_function("() => document.querySelector('[data-field=events]').textContent.includes('by alice')")
    assert page.evaluate("window.__no_reload") == 1
    shot(page, "outcome.png", tmp_path)
    context.close()
    close_db_connections()
