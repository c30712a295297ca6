"""status.cancel(): pending, delayed, retrying, running and finished tasks."""

import pytest

from usertasks.abort import get_backend
from usertasks.models import EventKind, UserTaskStatus
from usertasks.states import State

from . import tasks_cancel as t
from .helpers import wait_final, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def effect(redis, key):
    return int(redis.get(f"side-effect:{key}") or 0)


def events(status):
    return list(status.events.values_list("kind", flat=True))


def test_cancel_pending_never_runs_the_body(start_worker, user, other_user, redis):
    status = t.side_effect.send_for(user, label="p")
    assert status.cancel(by=other_user) is True
    assert status.state == State.CANCELED and status.cancel_outcome == "canceled"
    assert status.canceled_by == other_user and status.cancel_requested and status.finished
    ev = status.events.get(kind=EventKind.CANCELED)
    assert ev.actor == other_user
    start_worker()
    # The message is consumed (acknowledged, not dead-lettered) and the body never runs.
    wait_for(lambda: not redis.hlen("dramatiq:default.msgs"), message="message consumed")
    assert effect(redis, "ran:p") == 0
    assert not redis.exists("dramatiq:default.XQ.msgs")
    status.refresh_from_db()
    assert status.state == State.CANCELED and status.attempts == 0
    assert EventKind.STARTED not in events(status)
    assert not get_backend().is_set(status.pk)  # flag removed once the worker skipped it


def test_cancel_delayed(worker, user, redis):
    status = t.side_effect.send_for_with_options(user, kwargs={"label": "d"}, delay=1500)
    assert status.eta is not None
    assert status.cancel(by=user) is True
    assert status.state == State.CANCELED
    wait_for(lambda: not redis.hlen("dramatiq:default.DQ.msgs") and not redis.hlen("dramatiq:default.msgs"),
             timeout=30, message="delayed message consumed")
    assert effect(redis, "ran:d") == 0
    status.refresh_from_db()
    assert status.state == State.CANCELED


def test_cancel_retrying(worker, user, redis):
    status = t.fail_then_work.send_for(user, label="r")
    wait_for(lambda: status.refresh() and status.state == State.RETRYING, message="Retrying")
    assert status.cancel(by=user) is True
    assert status.state == State.CANCELED
    assert status.events.filter(kind=EventKind.CANCELED).get().detail == "Canceled while waiting to retry."
    wait_for(lambda: not redis.hlen("dramatiq:default.DQ.msgs") and not redis.hlen("dramatiq:default.msgs"),
             timeout=30, message="retry message consumed")
    assert effect(redis, "ran:r") == 0
    assert effect(redis, "attempt:r") == 1
    status.refresh_from_db()
    assert status.state == State.CANCELED and status.attempts == 1


def test_cancel_running(worker, user, other_user, redis):
    status = t.wait_steps.send_for(user, label="run", n=3000)
    wait_for(lambda: effect(redis, "started:run"), message="task started")
    wait_for(lambda: status.refresh() and status.completed_steps > 0, message="progress")
    assert status.cancel(by=other_user) is True
    assert status.cancel_outcome == "requested" and status.state == State.IN_PROGRESS
    wait_final(status)
    assert status.state == State.CANCELED
    assert status.canceled_by == other_user
    assert status.completed_steps < 3000
    assert effect(redis, "done:run") == 0
    kinds = events(status)
    assert kinds[-2:] == [EventKind.CANCEL_REQUESTED, EventKind.CANCELED]
    assert status.events.get(kind=EventKind.CANCEL_REQUESTED).actor == other_user
    assert not get_backend().is_set(status.pk)
    assert not redis.exists("dramatiq:default.XQ.msgs")  # not dead-lettered
    assert status.attempts == 1


def test_check_abort_and_abort_requested(worker, user, redis):
    status = t.check_abort_loop.send_for(user, label="ca")
    wait_for(lambda: effect(redis, "started:ca"), message="task started")
    wait_for(lambda: status.refresh() and status.state == State.IN_PROGRESS, message="In Progress")
    status.cancel(by=user)
    wait_final(status)
    assert status.state == State.CANCELED
    assert effect(redis, "saw:ca") == 1 and effect(redis, "done:ca") == 0


def test_cancel_finished_is_a_noop(worker, user, redis):
    status = t.side_effect.send_for(user, label="f")
    wait_final(status)
    before = events(status)
    assert status.cancel(by=user) is False
    assert status.cancel_outcome == "already_final"
    assert status.state == State.SUCCEEDED and status.canceled_by is None and status.cancel_requested is None
    assert events(status) == before


def test_cancel_twice(worker, user, redis):
    status = t.side_effect.send_for_with_options(user, kwargs={"label": "tw"}, delay=60000)
    assert status.cancel(by=user) is True
    assert status.cancel(by=user) is False
    assert UserTaskStatus.objects.get(pk=status.pk).state == State.CANCELED


def test_canceling_a_pending_task_sends_task_finished(user, other_user, redis):
    from usertasks.signals import task_finished

    seen = []

    def receiver(sender, status, state, **kwargs):
        seen.append((status.pk, state))

    task_finished.connect(receiver)
    try:
        status = t.side_effect.send_for(user, label="signal")
        assert status.cancel(by=other_user)
        assert seen == [(status.pk, State.CANCELED)]
    finally:
        task_finished.disconnect(receiver)


def test_cancel_of_a_message_claimed_at_prefetch_ends_it_at_once(start_worker, user, redis):
    """One worker thread busy with a long task; the next message was fetched and claimed by the
    consumer (a batch at a time), so a cancel sees it as running. The abort poller, which
    watches prefetched claims too, ends it Canceled at once, long before a thread is free, and
    its body never runs."""
    start_worker(processes=1, threads=1)
    busy = t.wait_steps.send_for(user, label="busy", n=600, delay=0.01)
    wait_for(lambda: busy.refresh() and busy.state == State.IN_PROGRESS, message="the long task running")
    queued = t.side_effect.send_for(user, label="prefetched")  # sent once the only thread is busy
    backend = get_backend()
    wait_for(lambda: backend.claimed([queued.pk]), message="the next message claimed at prefetch")
    queued.refresh_from_db()
    assert queued.state == State.PENDING
    assert queued.cancel(by=user) is True
    wait_for(lambda: queued.refresh() and queued.state == State.CANCELED, timeout=3, message="Canceled")
    busy.refresh_from_db()
    assert busy.state == State.IN_PROGRESS  # the only thread is still busy: the poller did it
    assert queued.events.filter(kind=EventKind.CANCELED).count() == 1
    assert busy.cancel(by=user) is True
    wait_final(busy, timeout=30)
    # The prefetched message is then taken and skipped: consumed, body never run, flag cleared.
    wait_for(lambda: not redis.hlen("dramatiq:default.msgs"), message="messages consumed")
    assert effect(redis, "ran:prefetched") == 0
    queued.refresh_from_db()
    assert queued.state == State.CANCELED and queued.attempts == 0 and queued.started is None
    assert queued.events.filter(kind=EventKind.CANCELED).count() == 1
    wait_for(lambda: not backend.is_set(queued.pk), message="the flag cleared")
