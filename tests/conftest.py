import os
import signal
import subprocess
import sys
import time

import pytest
import redis as redis_lib
from django.db import connection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every tests/tasks*.py module holds actors; worker processes load them all.
TASK_MODULES = tuple(
    "tests." + name[:-3] for name in sorted(os.listdir(os.path.join(ROOT, "tests")))
    if name.startswith("tasks") and name.endswith(".py")
)


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


class Worker:
    """A real ``dramatiq`` worker process on the test Redis and the test database."""

    def __init__(self, processes=1, threads=4, modules=TASK_MODULES, extra_env=None):
        self.processes = processes
        self.threads = threads
        self.modules = modules
        self.extra_env = extra_env or {}
        self.proc = None

    def start(self):
        env = dict(os.environ)
        env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
        env["USERTASKS_TEST_DB_NAME"] = connection.settings_dict["NAME"]
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        # Idle worker and consumer threads wake every 100 ms instead of every second: the
        # worker notices a stop (teardown) sooner.
        env.setdefault("dramatiq_worker_timeout", "100")
        env.update(self.extra_env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "django_dramatiq.setup", *self.modules,
             "--processes", str(self.processes), "--threads", str(self.threads), "--worker-shutdown-timeout", "5000"],
            cwd=ROOT, env=env, start_new_session=True,
        )
        return self

    def stop(self, timeout=20):
        """Stop as a process manager does: SIGTERM to the main process, which forwards it to
        its worker processes (SIGTERM to the whole group would signal them twice, and Dramatiq
        kills a worker process at once on its second SIGTERM).  SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


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


def wait_for(predicate, timeout=30, interval=0.05, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def wait_final(status, timeout=30):
    from usertasks.states import FINAL_STATES

    def done():
        status.refresh_from_db()
        return status.state in FINAL_STATES

    wait_for(done, timeout, message=f"{status.name} to finish (state {status.state})")
    return status
