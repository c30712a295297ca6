"""The outbox of notifications: recorded with the final state, delivered once per task and
channel off the threads that run tasks, retried with backoff, and delivered by another worker
when the one that stored the state died right after its commit.  The webhook channel is tested
against a real HTTP server on 127.0.0.1."""

import hashlib
import hmac
import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import IntegrityError, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.helpers import wait_final, wait_for
from tests.tasks_web import make_task
from usertasks.models import FROM_ROW, EventKind, UserTaskNotification
from usertasks.notify import deliver_due, drain
from usertasks.notify.webhook import verify
from usertasks.states import State

pytestmark = pytest.mark.django_db

WEBHOOK = "usertasks.notify.webhook.WebhookChannel"
RECORDER = "tests.tasks_notify.RecordingChannel"
SECRET = "tests-webhook-secret"


class Endpoint:
    """A real HTTP server on 127.0.0.1 that records the requests it gets and answers each with
    the next of ``answers`` (a status code, or "hang": accept, read, never answer)."""

    def __init__(self):
        self.requests = []
        self.answers = []
        self.release = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.requests.append((self.path, dict(self.headers), body))
                answer = endpoint.answers.pop(0) if endpoint.answers else 204
                if answer == "hang":
                    endpoint.release.wait(30)
                    return
                self.send_response(answer)
                if 300 <= answer < 400:
                    self.send_header("Location", f"http://127.0.0.1:{endpoint.port}/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/tasks?x=1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    e = Endpoint()
    yield e
    e.close()


def webhook_settings(endpoint, **extra):
    return override_settings(
        USERTASKS=dict(
            {"BASE_URL": "http://testserver", "NOTIFIERS": [WEBHOOK], "WEBHOOK_URL": endpoint.url},
            WEBHOOK_SECRET=SECRET,
            **extra,
        )
    )


def record(task, state):
    UserTaskNotification.objects.record([(task.pk, state, FROM_ROW)])


def events(task, kind):
    return list(task.events.filter(kind=kind).values_list("detail", flat=True))


def test_webhook_posts_signed_json(user, endpoint):
    task = make_task(user, "Export <x>", "Succeeded")
    task.artifacts.create(name="Report", text="hello")
    with webhook_settings(endpoint):
        record(task, State.SUCCEEDED)
        assert drain() == 1
    (path, headers, body) = endpoint.requests[0]
    assert path == "/hooks/tasks?x=1"
    assert headers["Content-Type"] == "application/json"
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Usertasks-Signature"] == expected and verify(body, expected, SECRET)
    assert not verify(body + b" ", expected, SECRET)
    data = json.loads(body)
    row = UserTaskNotification.objects.get()
    assert headers["X-Usertasks-Delivery"] == str(row.pk) == str(data["delivery"])
    assert data["task"]["uuid"] == str(task.uuid) and data["task"]["state"] == "Succeeded"
    assert data["task"]["name"] == "Export <x>" and data["task"]["user"] == "alice"
    assert data["task"]["link"] == f"http://testserver/tasks/{task.uuid}/"
    assert [a["name"] for a in data["task"]["artifacts"]] == ["Report"]
    assert row.sent is not None and row.attempts == 1
    assert events(task, EventKind.NOTIFIED) == ["Notified by webhook."]


def test_a_failing_channel_is_retried_with_backoff_then_given_up(user, endpoint):
    task = make_task(user, "T", "Failed")
    endpoint.answers = [500, 302]
    with webhook_settings(endpoint, NOTIFY_RETRY_DELAY=60, NOTIFY_MAX_ATTEMPTS=3):
        record(task, State.FAILED)
        before = timezone.now()
        drain()
        row = UserTaskNotification.objects.get()
        assert row.sent is None and row.attempts == 1 and "HTTP 500" in row.last_error
        assert before + timedelta(seconds=59) < row.due < timezone.now() + timedelta(seconds=61)
        assert drain() == 0  # not due yet
        (failed,) = events(task, EventKind.NOTIFICATION_FAILED)
        assert "HTTP 500" in failed and "next attempt in 60 s" in failed

        UserTaskNotification.objects.update(due=timezone.now())
        drain()  # a redirect is a failure, and is not followed
        row.refresh_from_db()
        assert row.attempts == 2 and "HTTP 302" in row.last_error
        assert row.due > timezone.now() + timedelta(seconds=119)  # twice as long
        assert [p for p, _, _ in endpoint.requests] == ["/hooks/tasks?x=1"] * 2

        endpoint.answers = [503]
        UserTaskNotification.objects.update(due=timezone.now())
        drain()
        row.refresh_from_db()
        assert row.attempts == 3 and row.due is None and row.sent is None
        assert "gave up after 3 attempts" in events(task, EventKind.NOTIFICATION_FAILED)[-1]
        UserTaskNotification.objects.update(due=None)
        assert drain() == 0


def test_a_webhook_that_never_answers_times_out(user, endpoint):
    task = make_task(user, "T", "Succeeded")
    endpoint.answers = ["hang"]
    with webhook_settings(endpoint, WEBHOOK_READ_TIMEOUT=0.5):
        record(task, State.SUCCEEDED)
        started = time.monotonic()
        drain()
        took = time.monotonic() - started
    assert took < 5
    row = UserTaskNotification.objects.get()
    assert row.sent is None and "timed out" in row.last_error.lower()


def test_a_webhook_without_url_or_secret_fails_clearly(user):
    task = make_task(user, "T", "Succeeded")
    with override_settings(USERTASKS={"NOTIFIERS": [WEBHOOK]}):
        record(task, State.SUCCEEDED)
        drain()
    assert "WEBHOOK_URL" in UserTaskNotification.objects.get().last_error


def test_one_row_per_task_and_channel(user):
    task = make_task(user, "T", "Succeeded")
    with override_settings(USERTASKS={"NOTIFIERS": [RECORDER, WEBHOOK], "BASE_URL": "http://x"}):
        record(task, State.SUCCEEDED)
        record(task, State.SUCCEEDED)  # a repeat is ignored
    assert sorted(UserTaskNotification.objects.values_list("channel", flat=True)) == sorted([RECORDER, WEBHOOK])
    with pytest.raises(IntegrityError), transaction.atomic():
        UserTaskNotification.objects.create(status=task, channel=RECORDER, state=State.SUCCEEDED, due=timezone.now())


def test_a_claimed_batch_is_not_taken_twice_until_its_lease_ends(user, redis):
    task = make_task(user, "T", "Succeeded")
    with override_settings(USERTASKS={"NOTIFIERS": [RECORDER], "BASE_URL": "http://x"}):
        record(task, State.SUCCEEDED)
        # Another deliverer holds the row (claimed, then died before recording the outcome).
        UserTaskNotification.objects.update(claim="other", claimed_until=timezone.now() + timedelta(seconds=300))
        assert deliver_due() == 0
        UserTaskNotification.objects.update(claimed_until=timezone.now() - timedelta(seconds=1))
        assert deliver_due() == 1
        assert deliver_due() == 0
    assert len(redis.lrange(f"side-effect:notified:{task.uuid}", 0, -1)) == 1


def test_a_batch_costs_the_same_queries_whatever_its_size(user):
    from django.db import connection

    def run(n):
        tasks = [make_task(user, f"T{i}", "Succeeded") for i in range(n)]
        for t in tasks:
            t.artifacts.create(name="a", text="x")
        UserTaskNotification.objects.record([(t.pk, State.SUCCEEDED, None) for t in tasks])
        with CaptureQueriesContext(connection) as queries:
            assert deliver_due() == n
        return [q["sql"].split()[0] for q in queries if "SAVEPOINT" not in q["sql"]]

    small, large = run(2), run(30)
    # The due rows, the claim, rows + tasks + users, the artifacts, the outcome, the events.
    assert small == large == ["SELECT", "UPDATE", "SELECT", "SELECT", "UPDATE", "INSERT"]


@pytest.mark.django_db(transaction=True)
def test_delivered_by_the_worker_off_the_task_threads(start_worker, user, redis):
    from tests.tasks_notify import notify_me

    start_worker(extra_env={"USERTASKS_TEST_NOTIFIERS": RECORDER})
    ok = notify_me.send_for(user, label="ok")
    bad = notify_me.send_for(user, ok=False, label="bad")
    quiet = notify_me.send_for(user, label="quiet")
    for s in (ok, bad, quiet):
        wait_final(s)
    for s, state in ((ok, "Succeeded"), (bad, "Failed")):
        got = wait_for(lambda s=s: redis.lrange(f"side-effect:notified:{s.uuid}", 0, -1), message="the notice")
        assert [g.decode() for g in got] == [f"{state}|usertasks-notify|1"]
        wait_for(lambda s=s: events(s, EventKind.NOTIFIED) == ["Notified by recorder."], message="the event")


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_right_after_the_commit_loses_no_notification(start_worker, user, endpoint):
    """The worker process is killed (SIGKILL) by a ``task_finished`` receiver, i.e. right after
    the commit of the final state and before its own deliverer (off in that worker, to make the
    race certain) could send anything.  Another worker delivers the notification, once."""
    from tests.tasks_notify import notify_me

    env = {"USERTASKS_TEST_NOTIFIERS": WEBHOOK, "USERTASKS_TEST_WEBHOOK_URL": endpoint.url}
    doomed = start_worker(extra_env=dict(env, USERTASKS_TEST_NOTIFY_DELIVERY="0", USERTASKS_TEST_DIE_AFTER_COMMIT="1"))
    status = notify_me.send_for(user, label="killed")
    wait_final(status)
    wait_for(lambda: doomed.proc.poll() is not None, message="the worker's death")
    doomed.kill()
    row = UserTaskNotification.objects.get(status=status)
    assert row.sent is None and endpoint.requests == []

    survivor = start_worker(extra_env=env)
    wait_for(lambda: events(status, EventKind.NOTIFIED), message="the delivery")
    survivor.stop()
    (request,) = endpoint.requests
    assert json.loads(request[2])["task"]["uuid"] == str(status.uuid)
    assert UserTaskNotification.objects.get(status=status).sent is not None


def test_the_command_drains_the_outbox(user, endpoint):
    from io import StringIO

    from django.core.management import call_command

    tasks = [make_task(user, f"T{i}", "Succeeded") for i in range(3)]
    with webhook_settings(endpoint, NOTIFY_BATCH_SIZE=2):
        for t in tasks:
            record(t, State.SUCCEEDED)
        out = StringIO()
        call_command("usertasks_notify", stdout=out)
    assert "3 notification" in out.getvalue()
    assert len(endpoint.requests) == 3 and not UserTaskNotification.objects.filter(sent__isnull=True).exists()


def test_a_deleted_task_drops_its_pending_notifications(user):
    task = make_task(user, "T", "Succeeded")
    with override_settings(USERTASKS={"NOTIFIERS": [RECORDER]}):
        record(task, State.SUCCEEDED)
        task.delete()
        assert deliver_due() == 1
    assert not UserTaskNotification.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_deliverer_delivers_what_its_process_commits_and_stops(user, redis):
    """A commit that records notifications wakes the deliverer of its process at once (its poll
    interval here is far longer than the test's deadline); stop() ends its thread."""
    from usertasks.notify import Deliverer

    with override_settings(USERTASKS={"NOTIFIERS": [RECORDER], "NOTIFY_POLL_INTERVAL": 600, "BASE_URL": "http://x"}):
        d = Deliverer().start()
        try:
            wait_for(lambda: d.rounds >= 1, message="the deliverer's first look")
            task = make_task(user, "T", "Succeeded")
            with transaction.atomic():
                record(task, State.SUCCEEDED)
            got = wait_for(
                lambda: redis.lrange(f"side-effect:notified:{task.uuid}", 0, -1), timeout=10, message="the notice"
            )
            assert [g.decode() for g in got] == ["Succeeded|usertasks-notify|1"]
        finally:
            d.stop(10)
        assert not d._thread.is_alive()
