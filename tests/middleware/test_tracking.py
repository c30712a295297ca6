import pytest

from usertasks.models import EventKind, UserTaskStatus
from usertasks.states import State

from .. import tasks
from ..helpers import wait_final

pytestmark = pytest.mark.django_db(transaction=True)


def test_success_path(worker, user, redis):
    status = tasks.count.send_for(user, 5, label="a")
    assert status.state == State.PENDING
    assert status.name == "Count to 5"
    wait_final(status)
    assert status.state == State.SUCCEEDED
    assert (status.completed_steps, status.total_steps) == (5, 5)
    assert status.message == "item 5 of 5"
    assert status.attempts == 1
    assert status.started and status.finished and status.started <= status.finished
    assert redis.get("side-effect:count:a") == b"1"
    kinds = list(status.events.values_list("kind", flat=True))
    assert kinds == [EventKind.ENQUEUED, EventKind.STARTED, EventKind.SUCCEEDED]


def test_in_progress_is_visible_while_running(worker, user, redis):
    from .. import tasks_core

    status = tasks_core.step_then_sleep.send_for(user, 1, 1.5, label="visible")
    from ..helpers import wait_for

    def running():
        status.refresh_from_db()
        return status.state == State.IN_PROGRESS

    wait_for(running, 30, message="task to be In Progress")
    assert status.started is not None and status.finished is None
    assert status.worker  # the run's token
    assert status.attempts == 1
    wait_final(status)
    assert status.state == State.SUCCEEDED
    assert status.worker  # kept: it names the worker that finished it


def test_failure_keeps_user_error_apart_from_traceback(worker, user, redis):
    status = tasks.fail.send_for(user, label="x")
    wait_final(status)
    assert status.state == State.FAILED
    assert status.error == "Bad input: x"
    assert status.error_class == "builtins.ValueError"
    assert "Traceback (most recent call last)" in status.traceback
    assert "ValueError: Bad input: x" in status.traceback
    assert "Traceback" not in status.error
    assert status.attempts == 1
    assert status.message == "about to fail"
    assert status.finished is not None
    assert status.percent is None
    events = list(status.events.values_list("kind", "attempt", "detail"))
    assert [e[0] for e in events] == [EventKind.ENQUEUED, EventKind.STARTED, EventKind.FAILED]
    assert events[2][1:] == (1, "Bad input: x")


def test_retrying_then_succeeded(worker, user, redis):
    status = tasks.flaky.send_for(user, 2, label="r2")
    wait_final(status)
    assert status.state == State.SUCCEEDED
    assert status.attempts == 3
    assert redis.get("flaky:r2") == b"3"
    assert redis.get("side-effect:flaky:r2") == b"1"
    events = list(status.events.values_list("kind", "attempt"))
    assert events == [
        (EventKind.ENQUEUED, 0),
        (EventKind.STARTED, 1),
        (EventKind.RETRYING, 1),
        (EventKind.STARTED, 2),
        (EventKind.RETRYING, 2),
        (EventKind.STARTED, 3),
        (EventKind.SUCCEEDED, 3),
    ]
    retry_details = list(status.events.filter(kind=EventKind.RETRYING).values_list("detail", flat=True))
    assert retry_details == ["attempt 1 failed", "attempt 2 failed"]
    # The error of a retried attempt is not left behind on a task that succeeded in the end.
    assert status.error == "" and status.traceback == ""


def test_retrying_state_is_stored_between_attempts(worker, user, redis):
    # A long backoff leaves the row Retrying long enough to see it.
    status = tasks.flaky.send_for_with_options(user, args=(1,), kwargs={"label": "slow"}, min_backoff=2000,
                                               max_backoff=2000)
    from ..helpers import wait_for

    def retrying():
        status.refresh_from_db()
        return status.state == State.RETRYING

    wait_for(retrying, 30, message="task to be Retrying")
    assert status.attempts == 1
    assert status.error == "attempt 1 failed"
    assert status.error_class == "builtins.RuntimeError"
    assert status.finished is None
    wait_final(status)
    assert status.state == State.SUCCEEDED
    assert status.attempts == 2


def test_retries_exhausted_fails(worker, user, redis):
    from .. import tasks_core

    status = tasks_core.always_fails.send_for(user, label="ex")
    wait_final(status)
    assert status.state == State.FAILED
    assert status.attempts == 3
    assert redis.get("flaky:always:ex") == b"3"
    assert status.error == "'attempt 3'"  # str() of a KeyError
    assert status.error_class == "builtins.KeyError"
    kinds = list(status.events.values_list("kind", flat=True))
    assert kinds == [
        EventKind.ENQUEUED,
        EventKind.STARTED, EventKind.RETRYING,
        EventKind.STARTED, EventKind.RETRYING,
        EventKind.STARTED, EventKind.FAILED,
    ]


def test_message_whose_row_is_missing_runs_untracked(worker, user, redis):
    from usertasks.protocol import STATUS_OPTION

    from ..helpers import wait_for

    tasks.noop.send_with_options(kwargs={"label": "ghost"}, **{STATUS_OPTION: 987654321})
    wait_for(lambda: redis.get("side-effect:noop:ghost") == b"1", 30, message="the body to run")
    assert not UserTaskStatus.objects.exists()
    # The worker is still healthy afterwards.
    status = tasks.noop.send_for(user, label="after")
    wait_final(status)
    assert status.state == State.SUCCEEDED


def test_event_of_run_matches_keyword_construction():
    """UserTaskEvent.of_run passes the fields by position: it must follow the model's order."""
    from usertasks.models import EventKind, UserTaskEvent

    quick = UserTaskEvent.of_run(7, EventKind.SUCCEEDED, 3, "done")
    slow = UserTaskEvent(status_id=7, kind=EventKind.SUCCEEDED, attempt=3, detail="done", created=quick.created)
    names = [f.attname for f in UserTaskEvent._meta.concrete_fields]
    assert [getattr(quick, n) for n in names] == [getattr(slow, n) for n in names]
    assert quick.pk is None and quick.actor_id is None and quick._state.adding


def test_run_tokens_are_unique_and_redrawn_in_a_new_process():
    """The ``worker`` token guards a run's writes: unique per run, and its random part is drawn
    again by a process that does not have the pid that drew it (a fork, a reused pid)."""
    import os
    import threading

    from usertasks import context

    tokens = []

    def draw():
        tokens.extend(context._run_token() for _ in range(500))

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(tokens)) == 2000
    assert all(t.split(":")[1] == str(os.getpid()) for t in tokens)
    saved = context._process
    try:
        context._process = (-1, "stale")
        token = context._run_token()
        assert "stale" not in token and context._process[0] == os.getpid()
    finally:
        context._process = saved
