"""No silent stall: the writer's connection has bounded waits, a watchdog breaks a batch stuck
past ``WRITE_TIMEOUT``, Redis calls time out, and the reaper leaves alone the tasks whose
message a live worker holds.  PostgreSQL behind a TCP proxy that stops forwarding (without
closing anything) for a real worker process."""

import json
import logging
import os
import socket
import sqlite3
import time
from datetime import timedelta

import pytest
import redis as redis_lib
from django.db import connection, connections
from django.test import override_settings
from django.utils import timezone

from usertasks import transitions
from usertasks.models import EventKind, UserTaskStatus
from usertasks.reaper import reap
from usertasks.rediscalls import Script, bounded
from usertasks.states import State
from usertasks.writer import Writer, _bound, bounded_options

from . import tasks_stall as t
from .helpers import wait_final, wait_for
from .proxy import Proxy

pytestmark = pytest.mark.django_db(transaction=True)

BASE = {"BASE_URL": "http://testserver", "PROGRESS_INTERVAL": 0.1}
postgresql_only = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith(("postgres", "pgsql")), reason="PostgreSQL only"
)


def effect(redis, key):
    return int(redis.get(f"side-effect:{key}") or 0)


def _reachable(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# -- the watchdog ------------------------------------------------------------------------------


def _lock(vendor, name):
    """Another connection that keeps the status table from being written until it is released."""
    if vendor == "sqlite":
        conn = sqlite3.connect(name, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN EXCLUSIVE")
        return lambda: (conn.execute("ROLLBACK"), conn.close())
    import psycopg

    s = connection.settings_dict
    conn = psycopg.connect(
        host=s["HOST"] or "127.0.0.1",
        port=s["PORT"] or 5432,
        user=s["USER"],
        password=s["PASSWORD"] or None,
        dbname=name,
    )
    conn.execute("LOCK TABLE usertasks_usertaskstatus IN ACCESS EXCLUSIVE MODE")
    return lambda: (conn.rollback(), conn.close())


def test_watchdog_logs_a_stuck_batch_and_the_change_is_stored_once_the_database_answers(user, caplog):
    if connection.vendor not in ("sqlite", "postgresql"):
        pytest.skip("the lock used here is SQLite's or PostgreSQL's")
    row = UserTaskStatus.objects.create(user=user, task_id="stuck", task_class="x", name="stuck")
    connection.close()
    caplog.set_level(logging.ERROR, logger="usertasks.writer")
    release = _lock(connection.vendor, connection.settings_dict["NAME"])
    with override_settings(USERTASKS=dict(BASE, WRITE_TIMEOUT=0.5)):
        writer = Writer()
        try:
            change = writer.submit(transitions.cancel_before_start(row.pk))
            began = time.monotonic()
            wait_for(lambda: "has been stuck for" in caplog.text, timeout=20, message="the watchdog's log line")
            assert time.monotonic() - began < 5
            record = next(r for r in caplog.records if "has been stuck for" in r.getMessage())
            assert record.levelno == logging.ERROR
            assert not change.done.is_set()
            release()
            assert change.wait(60) is True
        finally:
            writer.stop()
    row.refresh_from_db()
    assert row.state == State.CANCELED
    if connection.vendor == "postgresql":
        # The statement timeout or the watchdog ended the stuck attempt: the writer retried on a
        # fresh connection.
        assert "dropping its database connection and retrying on a fresh one" in caplog.text


# -- the options of the writer's connection ----------------------------------------------------


def test_bounded_options_add_only_what_the_site_left_unset():
    pg = bounded_options("postgresql", {"options": "-c search_path=x", "keepalives_idle": 5}, 30.0, 10)
    assert pg["connect_timeout"] == 10 and pg["keepalives"] == 1 and pg["keepalives_idle"] == 5
    assert pg["options"] == "-c search_path=x -c statement_timeout=30000"
    assert bounded_options("postgresql", {"options": "-c statement_timeout=5s"}, 30.0, 10)["options"] == (
        "-c statement_timeout=5s"
    )
    assert bounded_options("postgresql", {"pool": True}, 30.0, 10) is None  # shared with other threads
    my = bounded_options("mysql", {"read_timeout": 60}, 30.0, 10)
    assert my == {"read_timeout": 60, "write_timeout": 30, "connect_timeout": 10}
    assert bounded_options("sqlite", {"timeout": 5}, 30.0, 10) is None
    assert bounded_options("postgresql", {}, None, None) == {
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }


@postgresql_only
def test_the_writer_connection_to_postgresql_has_keepalives_and_a_statement_timeout():
    from django.db.backends.postgresql.base import DatabaseWrapper

    base = connections.settings["default"]
    wrapper = DatabaseWrapper(dict(base), "default")
    with override_settings(USERTASKS=dict(BASE, WRITE_TIMEOUT=7, CONNECT_TIMEOUT=3)):
        _bound(wrapper, base)
    try:
        wrapper.ensure_connection()
        with wrapper.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            assert cursor.fetchone()[0] == "7s"
        raw = wrapper.connection
        assert raw.info.get_parameters().get("connect_timeout") == "3"
        sock = socket.socket(fileno=os.dup(raw.pgconn.socket))
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        finally:
            sock.close()
    finally:
        wrapper.close()
    assert base.get("OPTIONS", {}).get("options") is None or "statement_timeout" not in base["OPTIONS"]["options"]


@pytest.mark.skipif(not _reachable(3306), reason="no MariaDB/MySQL at 127.0.0.1:3306")
def test_the_writer_connection_to_mysql_has_read_write_and_connect_timeouts():
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        import pymysql

        pymysql.install_as_MySQLdb()
    from django.db.backends.mysql.base import DatabaseWrapper

    base = {
        "ENGINE": "django.db.backends.mysql",
        "NAME": "test",
        "USER": "root",
        "PASSWORD": "",
        "HOST": "127.0.0.1",
        "PORT": 3306,
        "OPTIONS": {},
        "TIME_ZONE": None,
        "CONN_MAX_AGE": 0,
        "CONN_HEALTH_CHECKS": False,
        "AUTOCOMMIT": True,
        "ATOMIC_REQUESTS": False,
        "TEST": {},
    }
    wrapper = DatabaseWrapper(dict(base), "usertasks-mysql-check")
    with override_settings(USERTASKS=dict(BASE, WRITE_TIMEOUT=1, CONNECT_TIMEOUT=3)):
        _bound(wrapper, base)
    assert wrapper.settings_dict["OPTIONS"] == {"connect_timeout": 3, "read_timeout": 1, "write_timeout": 1}
    try:
        wrapper.ensure_connection()
        began = time.monotonic()
        with pytest.raises(Exception, match=r"(?i)lost connection|timed out|timeout"), wrapper.cursor() as cursor:
            cursor.execute("SELECT SLEEP(20)")
        assert time.monotonic() - began < 10  # the read timeout (at most three reads of 1 s each)
    finally:
        try:
            wrapper.close()
        except Exception:
            pass


# -- Redis ---------------------------------------------------------------------------------------


def test_redis_calls_of_usertasks_time_out_when_redis_stops_answering():
    target = int(os.environ["USERTASKS_TEST_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    with (
        Proxy(target) as proxy,
        override_settings(
            USERTASKS=dict(BASE, REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0", REDIS_SOCKET_TIMEOUT=0.5)
        ),
    ):
        from usertasks.abort.redis import RedisAbortBackend

        plain = redis_lib.Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0")  # no timeouts of its own
        flags = RedisAbortBackend(key_prefix="usertasks:stall-test:")
        script = Script("return 1")
        assert script(plain) == 1 and flags.flagged([1]) == set() and bounded(plain).ping()
        kwargs = bounded(plain).connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"], kwargs["socket_keepalive"]) == (
            0.5,
            2.0,
            True,
        )
        proxy.pause()
        for call in (lambda: script(plain), lambda: flags.flagged([1]), lambda: bounded(plain).ping()):
            began = time.monotonic()
            with pytest.raises(redis_lib.exceptions.TimeoutError):
                call()
            assert time.monotonic() - began < 3
        proxy.resume()
        assert script(plain) == 1 and flags.flagged([1]) == set()  # and they work again after


# -- the reaper ----------------------------------------------------------------------------------


def test_reaper_leaves_alone_a_task_whose_message_a_live_worker_holds(start_worker, user, redis):
    w = start_worker()
    status = t.slow.send_for(user, label="held", seconds=60)
    wait_for(lambda: effect(redis, "started:held"), timeout=30, message="started")
    # Its heartbeat is old (as when its worker's database writes are held up) but the worker
    # is alive and holds the message.
    UserTaskStatus.objects.filter(pk=status.pk).update(heartbeat=timezone.now() - timedelta(minutes=30))
    with override_settings(USERTASKS=dict(BASE, STALE_AFTER=1)):
        result = reap()
        assert result.held == [status.pk] and not result.requeued and not result.worker_lost
        status.refresh_from_db()
        assert status.state == State.IN_PROGRESS
        w.kill()  # now the holder dies: its broker heartbeat ages, and the reaper requeues
        wait_for(lambda: reap().requeued == [status.pk], timeout=30, interval=0.5, message="requeued")
    status.refresh_from_db()
    assert status.state == State.PENDING


# -- a database that stops answering -------------------------------------------------------------


@postgresql_only
def test_database_blackout_every_task_ends_after_it_and_none_is_requeued(start_worker, user, redis, capfd):
    s = connection.settings_dict
    settings = {"WRITE_TIMEOUT": 2, "CONNECT_TIMEOUT": 2}
    with Proxy(int(s["PORT"] or 5432)) as proxy:
        url = f"postgres://{s['USER']}@127.0.0.1:{proxy.port}/{s['NAME']}"
        start_worker(threads=8, extra_env={"DATABASE_URL": url, "USERTASKS_TEST_SETTINGS": json.dumps(settings)})
        running = t.slow.send_for(user, label="through", seconds=3)
        wait_for(lambda: effect(redis, "started:through"), timeout=30, message="its start stored")
        running.refresh_from_db()
        assert running.state == State.IN_PROGRESS
        proxy.pause()
        paused_at = time.monotonic()
        sent = [t.quick.send_for(user, label=f"during-{i}") for i in range(6)]  # their rows: not through the proxy
        wait_for(
            lambda: all(effect(redis, f"done:during-{i}") for i in range(6)) and effect(redis, "done:through"),
            timeout=30,
            message="the bodies to run during the blackout",
        )
        err = []
        wait_for(
            lambda: err.append(capfd.readouterr().err) or "has been stuck for" in "".join(err),
            timeout=30,
            message="the watchdog's log line",
        )
        assert "[ERROR] usertasks: a status write" in "".join(err)
        # The reaper (here, on a connection that works) sees a task without a heartbeat whose
        # message the live worker holds: it leaves it alone.
        with override_settings(USERTASKS=dict(BASE, STALE_AFTER=0.5)):
            wait_for(
                lambda: UserTaskStatus.objects.filter(
                    pk=running.pk, heartbeat__lt=timezone.now() - timedelta(seconds=1)
                ).exists(),
                message="stale",
            )
            result = reap()
        assert running.pk in result.held and not result.requeued and not result.worker_lost, result
        assert time.monotonic() - paused_at < 60
        proxy.resume()
        resumed_at = time.monotonic()
        # The bound of docs/guarantees.md: max(WRITE_TIMEOUT, CONNECT_TIMEOUT) + 3 s, plus a
        # margin for a machine shared with other test runs.
        for status in [running, *sent]:
            wait_final(status, timeout=2 + 3 + 10)
        elapsed = time.monotonic() - resumed_at
        assert elapsed < 15, elapsed
    for status in [running, *sent]:
        status.refresh_from_db()
        assert status.state == State.SUCCEEDED, (status.name, status.state, status.error)
        assert status.attempts == 1
        assert not status.events.filter(kind=EventKind.REQUEUED).exists()
    err.append(capfd.readouterr().err)
    assert "writable again" in "".join(err)
