"""Headless Chromium (Playwright) against a live server and a real worker: start a task from
the demo page, watch the progress bar move without a reload, cancel another task, download an
artifact.  Screenshots go to ``USERTASKS_SCREENSHOTS_DIR`` when set (``docs/`` for the README).

Skipped only when Playwright or Chromium (``/usr/bin/chromium``, Debian's ``chromium``) is
missing; ``make test`` installs Chromium when it can."""

import os
import shutil

import pytest

from usertasks.views import live

from ..helpers import wait_for

CHROMIUM = os.environ.get("USERTASKS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

playwright_sync = pytest.importorskip("playwright.sync_api")
if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes
    # between browser steps are plain blocking calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with playwright_sync.sync_playwright() as p:
        executable = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
        b = p.chromium.launch(executable_path=executable, headless=True, args=ARGS)
        try:
            yield b
        finally:
            close_db_connections()
            b.close()


# Every test asks for ``django_db_setup`` before the session-scoped ``live_server``, so the live
# server (and its threads' database connections) stops before the test database is dropped.


def close_db_connections():
    """ORM calls made while Playwright's sync API runs happen in another context (a greenlet),
    so Django gives them their own connection: close it, or it outlives the test database."""
    from django.db import connections

    connections.close_all()


def shot(page, name, tmp_path):
    target = os.environ.get("USERTASKS_SCREENSHOTS_DIR") or str(tmp_path)
    page.screenshot(path=os.path.join(target, name), full_page=True)


def progress(page):
    value = page.get_attribute("[data-ut-status] [role=progressbar]", "aria-valuenow")
    return int(value) if value else 0


def test_demo_flow_in_chromium(django_db_setup, browser, live_server, worker, user, tmp_path, settings):
    from usertasks.models import UserTaskStatus

    # Short streams: the browser reconnects (so this also covers reconnection), and a stream the
    # browser dropped releases its server thread and database connection soon after.
    settings.USERTASKS = {**settings.USERTASKS, "LIVE_STREAM_SECONDS": 3}

    context = browser.new_context(viewport={"width": 1100, "height": 820}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60000)
    page.on("dialog", lambda dialog: dialog.accept())

    # Log in through the demo's login page.
    page.goto(live_server.url + "/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "pw")
    page.click("button[type=submit]")
    page.wait_for_selector("#start-export")

    # Start an export from the demo page: the status page's bar moves without a reload.
    page.click("#start-export")
    page.wait_for_selector("[data-ut-status]")
    export_url = page.url
    page.evaluate("window.__no_reload = 'still here'")
    first = progress(page)
    page.wait_for_function(
        "() => Number(document.querySelector('[data-ut-status] [role=progressbar]')"
        ".getAttribute('aria-valuenow') || 0) >= 30", timeout=60000)
    assert progress(page) > first
    assert page.evaluate("window.__no_reload") == "still here"
    page.wait_for_timeout(300)
    shot(page, "status-page.png", tmp_path)

    # The dashboard's row of the running export moves too, without a reload.
    board = context.new_page()
    board.set_default_timeout(60000)
    board.goto(live_server.url + "/tasks/")
    row_bar = "tr[data-uuid] [role=progressbar]"
    start_value = int(board.get_attribute(row_bar, "aria-valuenow") or 0)
    board.evaluate("window.__no_reload = 1")
    board.wait_for_function(
        f"() => Number(document.querySelector('{row_bar}').getAttribute('aria-valuenow') || 0) > {start_value}")
    assert board.evaluate("window.__no_reload") == 1
    board.close()

    # Start another one and cancel it from its page (confirm dialog accepted).
    other = context.new_page()
    other.set_default_timeout(60000)
    other.on("dialog", lambda dialog: dialog.accept())
    other.goto(live_server.url + "/")
    other.click("#start-export")
    other.wait_for_selector("[data-ut-status]")
    other.wait_for_function("() => document.querySelector('[data-field=state_text]').textContent.trim() === 'In Progress'")
    other.click("[data-field=cancel_form] button")
    other.wait_for_function(
        "() => document.querySelector('[data-field=state_text]').textContent.trim() === 'Canceled'", timeout=60000)
    canceled = UserTaskStatus.objects.get(uuid=other.url.rstrip("/").rsplit("/", 1)[-1])
    assert canceled.state == "Canceled" and canceled.canceled_by_id == user.pk

    # The first export finishes on its own page (still no reload) and offers its file.
    page.wait_for_function(
        "() => document.querySelector('[data-field=state_text]').textContent.trim() === 'Succeeded'", timeout=90000)
    assert page.url == export_url and page.evaluate("window.__no_reload") == "still here"
    link = page.wait_for_selector(".ut-artifact-file a")
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename == "sales-report.csv"
    with open(download.path(), encoding="utf-8") as fh:
        content = fh.read()
    assert content.startswith("order,region,product,quantity,amount") and content.count("\n") == 3001

    # The dashboard lists both, newest first.
    page.goto(live_server.url + "/tasks/")
    rows = page.locator("tr[data-uuid]")
    assert rows.count() == 2
    assert "Canceled" in rows.nth(0).inner_text() and "Succeeded" in rows.nth(1).inner_text()
    shot(page, "dashboard.png", tmp_path)
    context.close()
    # The live server's streams end by themselves (LIVE_STREAM_SECONDS above) once their pages
    # are gone; their database connections can be closed then.
    wait_for(lambda: live.open_streams() == 0, timeout=30, message="the live server's streams to end")
    close_db_connections()


def test_pages_work_with_javascript_off(django_db_setup, browser, live_server, user):
    from tests.tasks_web import make_task

    task = make_task(user, "No script", "In Progress", total_steps=4, completed_steps=1)
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(live_server.url + "/accounts/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "pw")
    page.click("button[type=submit]")
    page.goto(live_server.url + task.get_absolute_url())
    assert page.get_attribute("[role=progressbar]", "aria-valuenow") == "25"
    # No JavaScript: the cancel button leads to a confirmation page, then cancels.
    page.click("[data-field=cancel_form] button")
    page.click("text=Yes, cancel it")
    page.wait_for_url(live_server.url + task.get_absolute_url())
    task.refresh_from_db()
    assert task.cancel_requested is not None
    context.close()
    close_db_connections()
