"""Headless Chromium (Playwright) against a live server and a real worker: start a task from
the demo page, watch the progress bar move without a reload, cancel another task, download an
artifact.  Screenshots go to ``USERTASKS_SCREENSHOTS_DIR`` when set (``docs/`` for the README).

Skipped only when Playwright or Chromium (``/usr/bin/chromium``, Debian's ``chromium``) is
missing; ``make test`` installs Chromium when it can."""

import os
import re
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


LONG_WORD = "W" * 5000


@pytest.mark.parametrize("width", [1100, 375])
def test_long_words_wrap_and_the_console_stays_clean(django_db_setup, browser, live_server, user, width):
    """A 5,000-character word in every user text: the page is exactly as wide as the viewport;
    no console error (the favicon is served); the times read the same before and after a live
    update; user text the script writes is isolated; a Pending task shows no stray separator."""
    from tests.tasks_web import make_task
    from usertasks.artifacts import create_artifact
    from usertasks.models import UserTaskEvent, UserTaskStatus

    # (as long as each column holds: names 255 characters, messages 1,000, on every database)
    failed = make_task(user, "Long " + LONG_WORD[:250], "Failed", message=LONG_WORD[:900], error="Error " + LONG_WORD)
    create_artifact(failed.pk, LONG_WORD[:255], text=LONG_WORD)
    create_artifact(failed.pk, LONG_WORD[:255], url="https://example.com/" + "u" * 900)
    UserTaskEvent.objects.create(status=failed, kind="note", detail=LONG_WORD[:4000])
    running = make_task(user, "Running " + LONG_WORD[:240], "In Progress", total_steps=4, completed_steps=1)
    pending = make_task(user, "Waiting", "Pending")

    context = browser.new_context(viewport={"width": width, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30000)
    errors = []
    page.on("console", lambda msg: errors.append(f"{msg.text} {msg.location.get('url')}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Requests cut short by leaving a page (an open event stream, say) are not errors.
    page.on("requestfailed", lambda request: errors.append(f"failed: {request.url} {request.failure}")
            if "ERR_ABORTED" not in (request.failure or "") else None)
    page.on("response", lambda response: errors.append(f"{response.status}: {response.url}")
            if response.status >= 400 else None)
    page.goto(live_server.url + "/accounts/login/?next=/tasks/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "pw")
    page.click("button[type=submit]")
    page.wait_for_url(live_server.url + "/tasks/")
    errors.clear()  # the demo's login page is not one of ours (it links no icon)
    page.reload()

    for url in (failed.get_absolute_url(), running.get_absolute_url(), "/tasks/"):
        page.goto(live_server.url + url)
        page.wait_for_load_state("load")
        sizes = page.evaluate("() => [document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]")
        wide = page.evaluate("""(w) => Array.from(document.querySelectorAll('body *'))
            .filter(el => el.getBoundingClientRect().right > w + 0.5).slice(0, 5)
            .map(el => el.tagName + '.' + el.className + ' ' + Math.round(el.getBoundingClientRect().right))""", width)
        assert sizes[0] == width and sizes[1] <= width, (url, sizes, wide)

    # Live update of the running task: its history gets an event whose detail is the long
    # word and a time formatted like the others; the script's user text is isolated.
    page.goto(live_server.url + running.get_absolute_url())
    page.wait_for_function("() => document.querySelector('[data-field=state_text]')")
    UserTaskEvent.objects.create(status=running, kind="note", detail="\u062a\u0635\u062f\u064a\u0631 " + LONG_WORD)
    UserTaskStatus.objects.filter(pk=running.pk).update(completed_steps=3, message="three " + LONG_WORD[:900])
    page.wait_for_function("() => Number(document.querySelector('[role=progressbar]').getAttribute('aria-valuenow')) === 75")
    page.wait_for_function("() => document.querySelectorAll('.ut-event-detail').length >= 1")
    assert page.evaluate("() => document.documentElement.scrollWidth") == width
    isolated = page.evaluate("""() => Array.from(document.querySelectorAll(
        '.ut-event-detail, [data-field=message], [data-field=name], .ut-artifact-name'))
        .every(el => el.closest('bdi, [dir]') !== null)""")
    assert isolated
    times = page.evaluate("() => Array.from(document.querySelectorAll('time')).map(t => [t.getAttribute('datetime'), t.textContent])")
    assert times
    expected = page.evaluate("""(values) => values.map(v => new Intl.DateTimeFormat(document.documentElement.lang,
        {dateStyle: 'medium', timeStyle: 'medium', timeZone: 'UTC'}).format(new Date(v)))""", [t[0] for t in times])
    assert [t[1] for t in times] == expected
    assert not any(re.search(r"\d{4}-\d\d-\d\dT", text) for _, text in times)

    # A Pending task with no total: no separator between the (empty) percent and steps.
    page.goto(live_server.url + pending.get_absolute_url())
    separator = page.evaluate("""() => {
        const steps = document.querySelector('[data-field=steps]');
        return getComputedStyle(steps, '::before').content; }""")
    assert separator in ("none", "normal", ""), separator
    box = page.evaluate("() => document.querySelector('.ut-progress-text').getBoundingClientRect().width")
    text = page.evaluate("() => document.querySelector('.ut-progress-text').innerText.trim()")
    assert text == "", (text, box)

    assert errors == [], "\n".join(errors)
    context.close()
    close_db_connections()
