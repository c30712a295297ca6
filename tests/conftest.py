"""Fixtures of the test suite.  Helpers (real worker processes, waiting for an event) are in
``tests/helpers.py``: tests import them from there."""

import os

import pytest
import redis as redis_lib

from .helpers import Worker


@pytest.fixture(autouse=True)
def _no_left_over_abort_keys():
    """Abort flags and claims are keyed by row id, and on SQLite a test that runs in a
    rolled-back transaction hands its ids out again (the AUTOINCREMENT counter is rolled back
    with it): remove what a test left behind, so the next test's rows do not inherit it."""
    yield
    client = redis_lib.Redis.from_url(os.environ["USERTASKS_TEST_REDIS_URL"])
    keys = list(client.scan_iter("usertasks:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def redis():
    client = redis_lib.Redis.from_url(os.environ["USERTASKS_TEST_REDIS_URL"])
    yield client
    for key in client.scan_iter("side-effect:*"):
        client.delete(key)
    for key in client.scan_iter("flaky:*"):
        client.delete(key)


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("alice", "alice@example.com", "pw")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("bob", "bob@example.com", "pw")


@pytest.fixture
def worker(transactional_db, redis):
    """A worker process for one test (with a flushed broker)."""
    redis.flushdb()
    w = Worker().start()
    yield w
    w.stop()
    redis.flushdb()


@pytest.fixture
def start_worker(transactional_db, redis):
    """Start worker processes with custom options: ``start_worker(processes=2, threads=8)``."""
    redis.flushdb()
    started = []

    def start(**kwargs):
        w = Worker(**kwargs).start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
    redis.flushdb()


@pytest.fixture(scope="session", autouse=True)
def _release_the_test_database(django_db_setup, django_db_blocker):
    """Before the test database is dropped: stop this process's status writer (its thread has a
    connection of its own) and, on PostgreSQL, end the sessions a killed worker process may have
    left, so that dropping the database is not refused ("being accessed by other users")."""
    yield
    from django.db import connection, connections

    from usertasks import runs

    runs.shutdown()
    with django_db_blocker.unblock():
        if connection.vendor == "postgresql":
            name = connection.settings_dict["NAME"]
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    [name],
                )
        connections.close_all()
