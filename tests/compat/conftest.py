import os
import signal
import subprocess
import sys

import pytest
import redis as redis_lib

from ..helpers import ROOT, wait_for

PROTOCOLS = (1, 2)


@pytest.fixture(autouse=True)
def _artifact_files(settings):
    """Remove the artifact files the test stored (in this process or a worker)."""
    import shutil

    root = os.path.join(settings.MEDIA_ROOT, "usertasks")
    before = set(os.listdir(root)) if os.path.isdir(root) else set()
    yield
    if os.path.isdir(root):
        for name in set(os.listdir(root)) - before:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


@pytest.fixture(autouse=True)
def _rules():
    import user_tasks.rules

    user_tasks.rules.add_rules()


@pytest.fixture(scope="session")
def celery_app():
    from .celeryapp import app

    return app


@pytest.fixture(scope="session", params=PROTOCOLS, ids=lambda p: f"proto{p}")
def protocol(request, celery_app):
    """The Celery message protocol the test process publishes with (and the worker uses)."""
    saved = celery_app.conf.task_protocol
    _set_protocol(celery_app, request.param)
    yield request.param
    _set_protocol(celery_app, saved)


def _set_protocol(app, value):
    app.conf.task_protocol = value
    app.amqp.__dict__.pop("create_task_message", None)


class CeleryWorker:
    """A real ``celery worker`` process (thread pool) on the test Redis and test database."""

    def __init__(self, db_name, protocol):
        self.db_name = db_name
        self.protocol = protocol
        self.proc = None

    def start(self):
        env = dict(os.environ)
        env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
        env["USERTASKS_TEST_DB_NAME"] = self.db_name
        env["USERTASKS_TEST_CELERY_PROTOCOL"] = str(self.protocol)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.compat.celeryapp", "worker", "--pool", "threads",
             "--concurrency", "4", "--queues", "compat", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "--loglevel", "WARNING", "--hostname", f"compat{self.protocol}@%h"],
            cwd=ROOT, env=env, start_new_session=True,
        )
        return self

    def ready(self, app, timeout=60):
        def pong():
            if self.proc.poll() is not None:
                raise AssertionError(f"celery worker exited with {self.proc.returncode}")
            return app.control.ping(timeout=0.5)

        wait_for(pong, timeout, interval=0.2, message="the celery worker to answer")
        return self

    def stop(self, timeout=20):
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="session")
def _celery_worker(protocol, celery_app, django_db_setup, django_db_blocker):
    from django.db import connection

    redis_lib.Redis.from_url(celery_app.conf.broker_url).flushdb()
    worker = CeleryWorker(connection.settings_dict["NAME"], protocol).start()
    try:
        worker.ready(celery_app)
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def celery_worker(_celery_worker, transactional_db, redis):
    """The session's Celery worker, for a test on the real broker (protocol 1 and 2)."""
    yield _celery_worker


@pytest.fixture
def eager(celery_app, protocol, transactional_db):
    """Tasks run in the calling process (``task_always_eager``)."""
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = False
    yield celery_app
    celery_app.conf.task_always_eager = False
