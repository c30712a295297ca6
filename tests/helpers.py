"""Helpers of the test suite: real worker processes, and waiting for the event that proves a
point (never a fixed sleep).  Tests import them from here; ``conftest.py`` holds the fixtures."""

import os
import signal
import subprocess
import sys
import time

from django.db import connection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every tests/tasks*.py module holds actors; worker processes load them all.
TASK_MODULES = tuple(
    "tests." + name[:-3]
    for name in sorted(os.listdir(os.path.join(ROOT, "tests")))
    if name.startswith("tasks") and name.endswith(".py")
)


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
