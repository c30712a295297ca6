"""usertasks.backends.UserTasksBackend: Django's task API run by real workers, results read
from the status rows.  The checks of Django's own backend-agnostic task tests (enqueue,
get_result, refresh, validation errors, unknown ids) are run against this backend."""

import asyncio
import threading
import uuid
from datetime import timedelta

import django
import pytest
from asgiref.sync import async_to_sync
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

import usertasks
from usertasks.backends import UserTasksBackend, framework
from usertasks.backends.runner import ACTOR_NAME
from usertasks.exceptions import ArgumentsNotSerializable
from usertasks.models import EventKind, UserTaskStatus
from usertasks.states import State

from .. import tasks_django as t
from ..helpers import wait_final, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

Status = framework.TaskResultStatus


def effect(redis, key):
    return int(redis.get(f"side-effect:{key}") or 0)


def row_of(result):
    return UserTaskStatus.objects.get(uuid=result.id)


def wait_result(result, timeout=30):
    wait_for(lambda: (result.refresh(), result.is_finished)[1], timeout, message=f"{result.id} to finish")
    return result


# -- the framework ---------------------------------------------------------------------------


def test_the_framework_in_use():
    expected = "django.tasks" if django.VERSION >= (6, 0) else "django_tasks"
    assert expected == framework.MODULE
    backend = t.add.get_backend()
    assert isinstance(backend, UserTasksBackend)
    assert backend.supports_defer and backend.supports_get_result and backend.supports_async_task
    assert not backend.supports_priority


# -- enqueue and results (as Django's own backend tests check them) -----------------------------


def test_enqueue_then_run_then_get_result(worker, user, redis):
    # Inside a transaction the message waits for the commit: the row is seen before any run.
    with transaction.atomic():
        with usertasks.on_behalf_of(user):
            result = t.add.enqueue(1, 2)
        assert isinstance(result, framework.TaskResult)
        assert result.status == Status.READY and not result.is_finished
        assert result.task is t.add or result.task.func is t.add.func
        assert result.args == [1, 2] and result.kwargs == {}
        assert result.backend == "default"
        assert result.enqueued_at is not None and result.started_at is None and result.finished_at is None
        assert result.errors == [] and result.worker_ids == [] and result.attempts == 0
        with pytest.raises(ValueError, match="not finished"):
            _ = result.return_value
        row = row_of(result)
        assert row.user == user and row.state == State.PENDING
        assert row.task_class == "tests.tasks_django.add" and row.name == "add"
    wait_result(result)
    assert result.status == Status.SUCCESSFUL
    assert result.return_value == 3
    assert result.started_at is not None and result.finished_at >= result.started_at >= result.enqueued_at
    assert result.last_attempted_at is not None
    assert result.attempts == 1 and len(result.worker_ids) == 1
    assert effect(redis, "dj-add:1:2") == 1
    fetched = t.add.get_result(result.id)
    assert fetched.id == result.id and fetched.return_value == 3 and fetched.status == Status.SUCCESSFUL
    assert t.add.get_backend().get_result(result.id).return_value == 3
    row.refresh_from_db()
    assert row.state == State.SUCCEEDED and row.return_value == 3


def test_keyword_arguments_and_json_normalised(worker, user):
    with usertasks.on_behalf_of(user):
        result = t.echo.enqueue(1, (2, 3), key={"a": (4,)})
    assert result.args == [1, [2, 3]] and result.kwargs == {"key": {"a": [4]}}
    wait_result(result)
    assert result.return_value == {"args": [1, [2, 3]], "kwargs": {"key": {"a": [4]}}}


def test_return_value_none(worker):
    result = t.wait_steps.using(priority=0).enqueue("none", n=1)
    wait_result(result)
    assert result.status == Status.SUCCESSFUL and result.return_value is None


def test_get_result_of_unknown_ids():
    backend = t.add.get_backend()
    for bad in (str(uuid.uuid4()), "not-a-uuid", "", "123"):
        with pytest.raises(framework.TaskResultDoesNotExist):
            backend.get_result(bad)
        with pytest.raises(framework.TaskResultDoesNotExist):
            t.add.get_result(bad)


def test_get_result_of_a_plain_user_task_does_not_exist(user):
    from .. import tasks as plain

    status = plain.noop.send_for(user, label="x")
    with pytest.raises(framework.TaskResultDoesNotExist):
        t.add.get_backend().get_result(str(status.uuid))


def test_get_result_through_another_backend_alias_does_not_exist():
    result = t.add.enqueue(1, 1)
    from usertasks.backends.framework import task_backends

    with pytest.raises(framework.TaskResultDoesNotExist):
        task_backends["retrying"].get_result(result.id)


def test_get_result_of_another_task_is_a_mismatch():
    result = t.add.enqueue(1, 1)
    from importlib import import_module

    mismatch = import_module(f"{framework.MODULE}.exceptions").TaskResultMismatch
    with pytest.raises(mismatch):
        t.echo.get_result(result.id)


def test_async_enqueue_and_get_result(worker, user):
    async def go():
        with usertasks.on_behalf_of(user):
            result = await t.add.aenqueue(20, 22)
        return result

    result = async_to_sync(go)()
    assert row_of(result).user == user

    async def fetch():
        return await t.add.aget_result(result.id)

    wait_for(lambda: async_to_sync(fetch)().is_finished, message="async result")
    fetched = async_to_sync(fetch)()
    assert fetched.return_value == 42
    async_to_sync(result.arefresh)()
    assert result.return_value == 42


def test_async_task_function(worker, user):
    with usertasks.on_behalf_of(user):
        result = t.add_async.enqueue(2, 5)
    wait_result(result)
    assert result.status == Status.SUCCESSFUL, result.errors
    assert result.return_value == {"sum": 7, "tracked": True}
    assert row_of(result).message == "async step"


def test_takes_context(worker, user):
    with usertasks.on_behalf_of(user):
        result = t.with_context.enqueue("ctx")
    wait_result(result)
    assert result.return_value == {"attempt": 1, "id": result.id, "status": "RUNNING", "label": "ctx"}


# -- failures ------------------------------------------------------------------------------------


def test_failure_has_errors_with_class_path_and_traceback(worker, user, redis):
    with usertasks.on_behalf_of(user):
        result = t.fail.enqueue("boom")
    wait_result(result)
    assert result.status == Status.FAILED
    with pytest.raises(ValueError, match="failed"):
        _ = result.return_value
    [error] = result.errors
    assert error.exception_class_path == "builtins.ValueError"
    assert error.exception_class is ValueError
    assert "Traceback" in error.traceback and "Bad input: boom" in error.traceback
    row = row_of(result)
    assert row.state == State.FAILED and row.attempts == 1  # not retried by default
    assert row.error == "Bad input: boom"


def test_return_value_not_json_ends_failed(worker, user):
    with usertasks.on_behalf_of(user):
        result = t.not_json.enqueue("nj")
    wait_result(result)
    assert result.status == Status.FAILED
    [error] = result.errors
    assert error.exception_class_path == "usertasks.backends.errors.ReturnValueNotSerializable"
    row = row_of(result)
    assert "tests.tasks_django.not_json cannot be stored as JSON" in row.error
    assert row.return_value is None


def test_retries_when_the_backend_options_ask(worker, user, redis):
    with usertasks.on_behalf_of(user):
        result = t.flaky.enqueue(2, "f")
    wait_result(result)
    assert result.status == Status.SUCCESSFUL and result.return_value == 3
    assert result.attempts == 3 and len(set(result.worker_ids)) == 3
    kinds = list(row_of(result).events.values_list("kind", flat=True))
    assert kinds.count(EventKind.RETRYING) == 2


# -- validation ----------------------------------------------------------------------------------


def test_validation_errors():
    invalid = framework.InvalidTask
    with pytest.raises(invalid, match="priority"):
        t.add.using(priority=10)
    with pytest.raises(invalid, match="Queue"):
        t.add.using(queue_name="unknown")
    with pytest.raises(invalid, match="aware"):
        t.add.using(run_after=timezone.now().replace(tzinfo=None))
    with pytest.raises(invalid, match="module level"):
        t.add.get_backend().task_class(func=lambda: None, backend="default", queue_name="default",
                                       priority=0, run_after=None)
    with pytest.raises(invalid, match="context"):
        t.add.get_backend().task_class(func=t.fail.func, backend="default", queue_name="default",
                                       priority=0, run_after=None, takes_context=True)


def test_arguments_that_are_not_json(redis):
    with pytest.raises(ArgumentsNotSerializable, match="JSON"):
        t.add.enqueue(object(), 1)
    with pytest.raises(TypeError):  # ArgumentsNotSerializable is a TypeError, as Django's backends raise
        t.echo.enqueue(key={1, 2})
    assert not UserTaskStatus.objects.exists()


@pytest.mark.parametrize("params, match", [
    ({"QUEUES": []}, "QUEUES"),
    ({"QUEUES": ["bad queue"]}, "queue name"),
    ({"OPTIONS": {"RETRIES": 1}}, "unknown option"),
    ({"OPTIONS": {"MAX_RETRIES": -1}}, "whole number"),
    ({"OPTIONS": {"UNIQUE": "yes"}}, "UNIQUE"),
])
def test_bad_configuration(params, match):
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match=match):
        UserTasksBackend("x", {"BACKEND": "usertasks.backends.UserTasksBackend", **params})


# -- on_behalf_of, transactions, deferral, queues -----------------------------------------------


def test_without_a_user_only_superusers_see_it(client, django_user_model, user):
    result = t.add.enqueue(1, 1)
    row = row_of(result)
    assert row.user is None
    client.force_login(user)
    assert client.get(row.get_absolute_url()).status_code == 404
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin)
    assert client.get(row.get_absolute_url()).status_code == 200


def test_on_behalf_of_is_a_decorator_and_stays_in_its_context(user, other_user):
    @usertasks.on_behalf_of(user)
    def start():
        return t.add.enqueue(1, 1)

    @usertasks.on_behalf_of(other_user)
    async def astart():
        return await t.add.aenqueue(1, 2)

    assert row_of(start()).user == user
    assert row_of(async_to_sync(astart)()).user == other_user
    assert row_of(t.add.enqueue(2, 2)).user is None  # outside: nobody
    with usertasks.on_behalf_of(user):
        seen = []
        thread = threading.Thread(target=lambda: seen.append(usertasks.context.acting_for()))
        thread.start()
        thread.join()
        assert seen == [(False, None)]  # another thread does not inherit it
        with usertasks.on_behalf_of(other_user):
            assert row_of(t.add.enqueue(3, 3)).user == other_user
        assert row_of(t.add.enqueue(4, 4)).user == user
    with pytest.raises(ValueError, match="authenticated"):
        usertasks.on_behalf_of(object())


def test_on_behalf_of_concurrent_coroutines(user, other_user):
    from usertasks.context import acting_for

    async def one(u, pause):
        with usertasks.on_behalf_of(u):
            await asyncio.sleep(pause)
            return acting_for()[1]

    async def both():
        return await asyncio.gather(one(user, 0.05), one(other_user, 0.01))

    assert async_to_sync(both)() == [user, other_user]


def test_sent_on_commit_and_nothing_on_rollback(worker, user, redis):
    with transaction.atomic():
        with usertasks.on_behalf_of(user):
            result = t.add.enqueue(7, 8)
        assert not redis.hlen("dramatiq:default.msgs")  # not sent yet
    wait_result(result)
    assert result.return_value == 15

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        rolled = t.add.enqueue(9, 9)
        raise Rollback
    with pytest.raises(framework.TaskResultDoesNotExist):
        t.add.get_result(rolled.id)
    assert effect(redis, "dj-add:9:9") == 0


def test_run_after_delays_the_message(worker, user, redis):
    due = timezone.now() + timedelta(seconds=1.5)
    with usertasks.on_behalf_of(user):
        result = t.add.using(run_after=due).enqueue(5, 5)
    row = row_of(result)
    assert row.eta is not None and abs((row.eta - due).total_seconds()) < 0.5
    assert redis.hlen("dramatiq:default.DQ.msgs") == 1
    wait_result(result)
    assert result.started_at >= due - timedelta(milliseconds=100)
    assert result.return_value == 10


def test_queue_name_is_the_dramatiq_queue(worker, user, redis):
    result = t.on_other_queue.enqueue("q")
    assert row_of(result).queue_name == "django-tasks"
    wait_result(result)
    assert result.return_value == "django-tasks"


def test_a_task_enqueued_by_a_task_belongs_to_its_user(worker, user):
    with usertasks.on_behalf_of(user):
        result = t.nested.enqueue("n")
    wait_result(result)
    inner = t.add.get_result(result.return_value)
    assert row_of(inner).user == user
    wait_result(inner)
    assert inner.return_value == 5


# -- what every user task has ----------------------------------------------------------------


def test_progress_artifacts_status_page_and_dashboard(worker, user, client):
    with usertasks.on_behalf_of(user):
        result = t.progress.enqueue(50, "p")
    wait_result(result)
    row = row_of(result)
    assert row.completed_steps == 50 and row.total_steps == 50
    assert sorted(row.artifacts.values_list("name", flat=True)) == ["Data", "Report"]
    client.force_login(user)
    page = client.get(row.get_absolute_url())
    assert page.status_code == 200 and b"progress" in page.content
    dashboard = client.get("/tasks/")
    assert dashboard.status_code == 200 and str(row.uuid).encode() in dashboard.content


def test_email_to_the_user_and_none_without_one(start_worker, user, tmp_path):
    import os

    outbox = tmp_path / "mail"
    outbox.mkdir()
    start_worker(extra_env={"USERTASKS_TEST_EMAIL_DIR": str(outbox)})
    nobody = t.add.enqueue(0, 0)
    with usertasks.on_behalf_of(user):
        result = t.add.enqueue(40, 2)
    wait_result(nobody)
    wait_result(result)

    def mail():  # the file backend creates its file before it writes the message
        return "".join((outbox / f).read_text() for f in os.listdir(outbox))

    text = wait_for(lambda: f"/tasks/{result.id}/" in mail() and mail(), message="the email")
    assert "alice@example.com" in text
    assert f"/tasks/{nobody.id}/" not in text


def test_cancel_pending_never_runs(start_worker, user, redis):
    with usertasks.on_behalf_of(user):
        result = t.add.enqueue(100, 1)
    row = row_of(result)
    assert row.cancel(by=user) is True
    start_worker()
    wait_for(lambda: not redis.hlen("dramatiq:default.msgs"), message="message consumed")
    result.refresh()
    assert result.status == Status.FAILED
    assert [e.exception_class_path for e in result.errors] == ["usertasks.exceptions.Aborted"]
    assert effect(redis, "dj-add:100:1") == 0


def test_cancel_running_stops_at_next_step(worker, user, redis):
    with usertasks.on_behalf_of(user):
        result = t.wait_steps.enqueue("c")
    wait_for(lambda: effect(redis, "dj-started:c"), message="task started")
    row = row_of(result)
    assert row.cancel(by=user) is True
    wait_final(row)
    assert row.state == State.CANCELED and row.completed_steps < 3000
    assert effect(redis, "dj-done:c") == 0
    result.refresh()
    assert result.status == Status.FAILED
    assert result.errors[0].exception_class_path == "usertasks.exceptions.Aborted"


def test_unique_tasks_through_options(worker, user):
    with usertasks.on_behalf_of(user):
        first = t.unique_sleep.enqueue("u")
        second = t.unique_sleep.enqueue("u")
        other = t.unique_sleep.enqueue("v")
    assert first.id == second.id and other.id != first.id
    wait_result(first)
    wait_result(other)
    with usertasks.on_behalf_of(user):
        again = t.unique_sleep.enqueue("u")  # the first one ended: a new task
    assert again.id != first.id


def test_signals(worker, user):
    seen = []

    def receiver(signal):
        def receive(sender, task_result, **kwargs):
            seen.append((signal, task_result.id, str(task_result.status)))

        return receive

    enqueued = receiver("enqueued")
    framework.task_enqueued.connect(enqueued)
    try:
        with usertasks.on_behalf_of(user):
            result = t.add.enqueue(1, 1)
    finally:
        framework.task_enqueued.disconnect(enqueued)
    assert seen == [("enqueued", result.id, "READY")]


def test_the_actor_is_registered_under_its_name():
    import dramatiq

    assert dramatiq.get_broker().get_actor(ACTOR_NAME) is not None


@override_settings(USERTASKS={"BASE_URL": "http://testserver", "PROGRESS_INTERVAL": 0.1})
def test_refresh_updates_in_place(worker, user):
    with usertasks.on_behalf_of(user):
        result = t.add.enqueue(3, 4)
    before = result.status
    wait_result(result)
    assert before == Status.READY and result.status == Status.SUCCESSFUL and result.return_value == 7


def test_reaper_ends_a_task_whose_worker_died(start_worker, user, redis):
    from usertasks.reaper import reap

    w = start_worker()
    with usertasks.on_behalf_of(user):
        result = t.wait_steps.enqueue("lost")
    wait_for(lambda: effect(redis, "dj-started:lost"), message="task started")
    wait_for(lambda: row_of(result).state == State.IN_PROGRESS, message="In Progress")
    w.kill()
    redis.flushdb()  # the broker lost the message too
    fast = {"BASE_URL": "http://testserver", "PROGRESS_INTERVAL": 0.1, "STALE_AFTER": 1, "PENDING_TIMEOUT": 1}
    with override_settings(USERTASKS=fast):
        wait_for(lambda: reap().worker_lost, timeout=15, interval=0.2, message="the reaper to act")
    result.refresh()
    assert result.status == Status.FAILED
    [error] = result.errors
    assert error.exception_class_path == "usertasks.exceptions.UserTasksError"
    assert "stopped unexpectedly" in error.traceback


def test_status_page_shows_return_value_and_traceback_to_staff_only(worker, user, client, django_user_model):
    with usertasks.on_behalf_of(user):
        ok = t.echo.enqueue(marker="<b>returned</b>")
        bad = t.fail.enqueue("page")
    wait_result(ok)
    wait_result(bad)
    client.force_login(user)
    page = client.get(row_of(ok).get_absolute_url()).content.decode()
    assert "returned" not in page
    page = client.get(row_of(bad).get_absolute_url()).content.decode()
    assert "Bad input: page" in page and "Traceback (most recent call last)" not in page
    staff = django_user_model.objects.create_superuser("staff", "staff@example.com", "pw")
    client.force_login(staff)
    page = client.get(row_of(ok).get_absolute_url()).content.decode()
    assert "Return value (staff only)" in page
    assert "&lt;b&gt;returned&lt;/b&gt;" in page and "<b>returned</b>" not in page  # escaped
    page = client.get(row_of(bad).get_absolute_url()).content.decode()
    assert "Traceback (most recent call last)" in page


def test_one_on_behalf_of_entered_by_many_threads(user):
    from usertasks.context import acting_for

    shared = usertasks.on_behalf_of(user)
    inside, release, seen, errors = threading.Barrier(4), threading.Event(), [], []

    def run():
        try:
            with shared:
                inside.wait(5)
                release.wait(5)
                seen.append(acting_for())
            seen.append(acting_for())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(seen, key=lambda pair: pair[0]) == [(False, None)] * 4 + [(True, user)] * 4
