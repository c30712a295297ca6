"""Faults: the abort store unreachable while tasks run; the database unreachable when a task ends."""

import sqlite3
import threading

import pytest
from django.db import connection
from django.test import override_settings

from usertasks.devredis import RedisServer
from usertasks.models import EventKind
from usertasks.states import State

from . import tasks_cancel as t
from .helpers import wait_final, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

WARNING = "[WARNING] usertasks: cannot read abort flags"  # as the worker's log lines show it


def effect(redis, key):
    return int(redis.get(f"side-effect:{key}") or 0)


@pytest.fixture
def abort_redis():
    server = RedisServer().start()
    yield server
    server.stop()


def test_abort_store_down_while_a_task_runs(start_worker, user, redis, abort_redis, capfd):
    start_worker(extra_env={"USERTASKS_TEST_ABORT_REDIS_URL": abort_redis.url})
    settings = {"BASE_URL": "http://testserver", "PROGRESS_INTERVAL": 0.1, "REDIS_URL": abort_redis.url}
    status = t.wait_steps.send_for(user, label="rd", n=3000)
    wait_for(lambda: status.refresh() and status.state == State.IN_PROGRESS and status.completed_steps,
             message="running")
    abort_redis.stop()
    down_at = status.completed_steps
    # The task goes on with the store down: 300 steps of 10 ms, three seconds at least, so the
    # poller fails to read the flags again and again (once a second while the store is down).
    wait_for(lambda: status.refresh() and status.completed_steps >= down_at + 300, timeout=60,
             message="the task to go on while the store is down")
    assert status.state == State.IN_PROGRESS
    before = status.completed_steps
    abort_redis.start()
    with override_settings(USERTASKS=settings):
        assert status.cancel(by=user) is True  # and cancels reach it again
    wait_final(status, timeout=30)
    assert status.state == State.CANCELED
    assert status.completed_steps > before
    assert effect(redis, "done:rd") == 0
    err = capfd.readouterr().err
    assert err.count(WARNING) == 1, err[-3000:]  # logged once, not once per tick


def test_abort_store_down_while_canceling_a_running_task(worker, user, redis):
    from usertasks.exceptions import AbortBackendError

    status = t.wait_steps.send_for(user, label="cd", n=300)
    wait_for(lambda: status.refresh() and status.state == State.IN_PROGRESS, message="running")
    down = {"BASE_URL": "http://testserver", "REDIS_URL": "redis://127.0.0.1:1/0"}
    with override_settings(USERTASKS=down):
        with pytest.raises(AbortBackendError):
            status.cancel(by=user)
    status.refresh_from_db()
    assert status.cancel_requested is not None  # recorded; calling again delivers it
    status.cancel(by=user)
    wait_final(status)
    assert status.state == State.CANCELED


def _lock_database(hold, body_done):
    """Make the database unwritable until ``hold`` is set; yield once the lock is taken."""
    vendor = connection.vendor
    name = connection.settings_dict["NAME"]
    if vendor == "sqlite":
        conn = sqlite3.connect(name, timeout=30, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        return conn, None
    import psycopg

    s = connection.settings_dict
    conn = psycopg.connect(host=s["HOST"] or "127.0.0.1", port=s["PORT"] or 5432, user=s["USER"],
                           password=s["PASSWORD"] or None, dbname=name)
    conn.execute("LOCK TABLE usertasks_usertaskstatus IN ACCESS EXCLUSIVE MODE")

    def cut():  # drop the worker's connections too: its writer must reconnect and retry
        body_done.wait(60)
        with psycopg.connect(host=s["HOST"] or "127.0.0.1", port=s["PORT"] or 5432, user=s["USER"],
                             password=s["PASSWORD"] or None, dbname=name, autocommit=True) as c:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                      "AND pid <> pg_backend_pid() AND pid <> %s", [name, conn.info.backend_pid])

    cutter = threading.Thread(target=cut, daemon=True)
    cutter.start()
    return conn, cutter


def test_database_down_when_a_task_ends(start_worker, user, redis, capfd):
    start_worker(extra_env={"USERTASKS_TEST_SQLITE_TIMEOUT": "0.5"})
    status = t.wait_steps.send_for(user, label="db", n=150)
    wait_for(lambda: status.refresh() and status.state == State.IN_PROGRESS, message="running")
    connection.close()
    hold, body_done = threading.Event(), threading.Event()
    conn, cutter = _lock_database(hold, body_done)
    try:
        wait_for(lambda: effect(redis, "done:db"), timeout=60, message="body finished")
        body_done.set()
        err = []
        wait_for(lambda: err.append(capfd.readouterr().err) or "cannot write task states" in "".join(err),
                 timeout=60, message="the writer failing to store the outcome")
        # Not acknowledged before it is stored: the message is still in the broker.
        assert redis.hlen("dramatiq:default.msgs") == 1
    finally:
        conn.rollback() if connection.vendor != "sqlite" else conn.execute("ROLLBACK")
        conn.close()
        if cutter:
            cutter.join(5)
    wait_final(status, timeout=60)
    assert status.state == State.SUCCEEDED
    assert (status.completed_steps, status.attempts) == (150, 1)
    # Once acknowledged, the message is gone: nothing can deliver it again, and a delivery before
    # the acknowledgement would have run its body by then.
    wait_for(lambda: not redis.hlen("dramatiq:default.msgs"), timeout=30, message="message acknowledged")
    assert effect(redis, "started:db") == 1 and effect(redis, "done:db") == 1  # acked once, never redelivered
    assert list(status.events.values_list("kind", flat=True))[-1] == EventKind.SUCCEEDED
    err.append(capfd.readouterr().err)
    assert "writable again" in "".join(err)  # the writer retried until it could write
