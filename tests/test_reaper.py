"""The reaper: lost workers, lost messages, left-over abort flags."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from usertasks.abort import get_backend
from usertasks.models import EventKind, UserTaskStatus
from usertasks.reaper import reap, reap_lost_tasks
from usertasks.states import State

from . import tasks_cancel as t
from .helpers import wait_final, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

FAST = {"BASE_URL": "http://testserver", "PROGRESS_INTERVAL": 0.1, "STALE_AFTER": 1, "PENDING_TIMEOUT": 1}


def stale_row(user, **kw):
    old = timezone.now() - timedelta(minutes=30)
    fields = dict(user=user, task_id=f"lost-{kw.pop('n', 1)}", task_class="x", name="lost", state=State.IN_PROGRESS,
                  worker="host:1:t:abc", heartbeat=old, started=old, attempts=1, unique_key="x:key")
    fields.update(kw)
    return UserTaskStatus.objects.create(**fields)


def test_stale_task_without_message_fails_and_releases(user, redis):
    redis.flushdb()
    row = stale_row(user)
    get_backend().set(row.pk)
    fresh = stale_row(user, n=2, heartbeat=timezone.now(), unique_key=None)
    out = StringIO()
    call_command("usertasks_reap", stdout=out)
    assert "1 worker lost" in out.getvalue()
    row.refresh_from_db()
    fresh.refresh_from_db()
    assert row.state == State.FAILED and row.finished and row.unique_key is None and row.worker == ""
    assert "stopped unexpectedly" in row.error
    assert row.events.get().kind == EventKind.WORKER_LOST
    assert not get_backend().is_set(row.pk)
    assert fresh.state == State.IN_PROGRESS  # its heartbeat is recent
    # A second pass changes nothing.
    assert not reap().worker_lost


def test_dry_run_changes_nothing(user, redis):
    redis.flushdb()
    row = stale_row(user)
    out = StringIO()
    call_command("usertasks_reap", "--dry-run", stdout=out)
    assert "Would reap: 1 worker lost" in out.getvalue()
    row.refresh_from_db()
    assert row.state == State.IN_PROGRESS


def test_canceled_task_whose_worker_died_ends_canceled(user, redis):
    redis.flushdb()
    row = stale_row(user, cancel_requested=timezone.now())
    reap()
    row.refresh_from_db()
    assert row.state == State.CANCELED


def test_killed_worker_with_lost_message(start_worker, user, redis):
    w = start_worker()
    status = t.wait_steps.send_for(user, label="lost", n=3000)
    wait_for(lambda: status.refresh() and status.state == State.IN_PROGRESS, message="In Progress")
    w.kill()
    redis.flushdb()  # broker data lost
    with override_settings(USERTASKS=FAST):
        wait_for(lambda: reap().worker_lost, timeout=30, interval=0.5, message="reaped")
    status.refresh_from_db()
    assert status.state == State.FAILED
    assert status.events.last().kind == EventKind.WORKER_LOST


def test_killed_worker_with_live_message_is_requeued_then_runs(start_worker, user, redis):
    w = start_worker()
    status = t.wait_steps.send_for(user, label="back", n=200)
    wait_for(lambda: status.refresh() and status.state == State.IN_PROGRESS, message="In Progress")
    w.kill()
    with override_settings(USERTASKS=FAST):
        wait_for(lambda: reap().requeued, timeout=30, interval=0.5, message="requeued")
    status.refresh_from_db()
    assert status.state == State.PENDING
    assert status.events.last().kind == EventKind.REQUEUED
    start_worker()
    wait_final(status, timeout=60)
    assert status.state == State.SUCCEEDED and status.attempts == 2


def test_pending_task_whose_message_is_gone(user, redis):
    redis.flushdb()
    lost = t.side_effect.send_for(user, label="gone")
    kept = t.side_effect.send_for(user, label="kept")
    # The first message disappears (queue flushed, broker data lost); the second is still queued.
    ids = [k for k, v in redis.hgetall("dramatiq:default.msgs").items() if lost.task_id.encode() in v]
    redis.hdel("dramatiq:default.msgs", *ids)
    redis.lrem("dramatiq:default", 0, ids[0])
    with override_settings(USERTASKS=dict(FAST, PENDING_TIMEOUT=3600)):
        assert not reap().never_started  # not overdue yet
    with override_settings(USERTASKS=FAST):
        result = reap(now=timezone.now() + timedelta(seconds=5))
    assert result.never_started == [lost.pk]
    lost.refresh_from_db()
    kept.refresh_from_db()
    assert lost.state == State.FAILED and "could not be started" in lost.error
    assert lost.events.last().kind == EventKind.NEVER_STARTED
    assert kept.state == State.PENDING
    redis.flushdb()


def test_left_over_flags_of_final_tasks_are_cleared(user, redis):
    redis.flushdb()
    done = stale_row(user, state=State.SUCCEEDED, unique_key=None)
    running = stale_row(user, n=2, heartbeat=timezone.now(), unique_key=None)
    for row in (done, running):
        get_backend().set(row.pk)
    get_backend().set(999999)  # no row at all
    assert reap().flags_cleared == 2
    assert get_backend().all_flagged() == {running.pk}


def test_periodic_actor_runs_a_pass(user, redis):
    redis.flushdb()
    row = stale_row(user)
    reap_lost_tasks()  # what a scheduler's message makes a worker do
    row.refresh_from_db()
    assert row.state == State.FAILED


def test_reaped_child_is_counted_on_its_container(user, redis):
    redis.flushdb()
    parent = stale_row(user, n=10, is_container=True, unique_key=None, children_total=2,
                       heartbeat=timezone.now())
    child = stale_row(user, n=11, parent=parent, unique_key=None)
    reap()
    child.refresh_from_db()
    parent.refresh_from_db()
    assert child.state == State.FAILED
    assert parent.children_failed == 1
    assert parent.state == State.IN_PROGRESS  # containers are not reaped themselves


def test_waiting_pipeline_stages_are_not_taken_for_lost_messages(user, redis):
    from usertasks import pipeline

    redis.flushdb()
    container = pipeline(user, [t.side_effect.message(label="one"), t.side_effect.message(label="two")])
    stages = list(container.children.order_by("pk"))
    assert stages[1].options.get("waiting")
    # The first stage's message is in the broker; the second has none yet, by design.
    with override_settings(USERTASKS=FAST):
        result = reap(now=timezone.now() + timedelta(seconds=5))
    assert stages[1].pk not in result.never_started
    stages[1].refresh_from_db()
    assert stages[1].state == State.PENDING
    redis.flushdb()


def test_completion_callback_left_due_is_sent_once(user, redis):
    """The process that ended a container stopped between the commit and the send of the
    completion callback: the mark set in the ending transaction is still there, and the reaper
    sends the callback (once; a container that ended less than a minute ago is left to its own
    process)."""
    import json

    from usertasks.containers.completion import callback_spec
    from usertasks.protocol import CALLBACK_DUE, CONTAINER_OPTION

    from . import tasks_fanout as tf

    redis.flushdb()
    ended = timezone.now() - timedelta(minutes=5)
    spec = {"policy": "allow_failures", "calls": [3], "closed": 1,
            "on_complete": callback_spec(tf.fan_done.message("reaped")), CALLBACK_DUE: True}
    lost = UserTaskStatus.objects.create(
        user=user, task_id="cb-lost", task_class="fan_parent", name="lost callback", state=State.SUCCEEDED,
        is_container=True, children_total=3, children_succeeded=3, finished=ended, options={"fanout": spec},
    )
    recent = UserTaskStatus.objects.create(
        user=user, task_id="cb-recent", task_class="fan_parent", name="being sent", state=State.SUCCEEDED,
        is_container=True, finished=timezone.now(), options={"fanout": dict(spec)},
    )
    sent = UserTaskStatus.objects.create(
        user=user, task_id="cb-sent", task_class="fan_parent", name="sent", state=State.SUCCEEDED,
        is_container=True, finished=ended, options={"fanout": {k: v for k, v in spec.items() if k != CALLBACK_DUE}},
    )
    assert reap(dry_run=True).callbacks == [lost.pk]
    assert redis.llen("dramatiq:default") == 0
    assert reap().callbacks == [lost.pk]
    messages = [json.loads(m) for m in redis.hvals("dramatiq:default.msgs")]
    assert [(m["actor_name"], m["args"], m["options"][CONTAINER_OPTION]) for m in messages] == [
        ("fan_done", ["reaped"], lost.pk)
    ]
    lost.refresh_from_db()
    assert CALLBACK_DUE not in lost.options["fanout"] and lost.options["fanout"]["calls"] == [3]
    assert reap().callbacks == []  # sent once
    assert redis.llen("dramatiq:default") == 1
    for row in (recent, sent):
        row.refresh_from_db()
    assert recent.options["fanout"][CALLBACK_DUE] is True and CALLBACK_DUE not in sent.options["fanout"]


def test_the_ending_transaction_marks_the_callback_due_until_it_is_sent(user, redis):
    from django.db import transaction

    from usertasks.containers.completion import callback_spec
    from usertasks.containers.counting import info as _info
    from usertasks.protocol import CALLBACK_DUE, WAITING
    from usertasks.transitions import complete_container as try_complete

    from . import tasks_fanout as tf

    redis.flushdb()
    spec = {"policy": "allow_failures", "calls": [0], "closed": 1, "on_complete": callback_spec(tf.fan_done)}
    row = UserTaskStatus.objects.create(
        user=user, task_id="cb-end", task_class="fan_parent", name="ends now", state=State.IN_PROGRESS,
        is_container=True, worker=WAITING, options={"fanout": spec},
    )
    rows = UserTaskStatus.objects.all()
    with transaction.atomic():
        assert try_complete(rows, _info(rows, row.pk)) is True
        inside = rows.get(pk=row.pk)
        assert inside.state == State.SUCCEEDED and inside.options["fanout"][CALLBACK_DUE] is True
        assert redis.llen("dramatiq:default") == 0  # sent after the commit, not before
    row.refresh_from_db()
    assert CALLBACK_DUE not in row.options["fanout"]
    assert redis.llen("dramatiq:default") == 1
