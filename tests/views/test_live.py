"""Live updates end to end: a real worker runs a task while a real server (``runserver``, and
uvicorn for ASGI) streams server-sent events of its progress."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from django.db import connection

from tests.helpers import ROOT, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(kind, port):
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "USERTASKS_TEST_DB_NAME": connection.settings_dict["NAME"],
        "PYTHONPATH": ROOT + os.pathsep + env.get("PYTHONPATH", ""),
    })
    if kind == "runserver":
        cmd = [sys.executable, "-m", "django", "runserver", "--noreload", "--skip-checks", f"127.0.0.1:{port}"]
    else:
        pytest.importorskip("uvicorn")
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "django.core.asgi:get_asgi_application",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def up():
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    wait_for(up, timeout=60, interval=0.2, message=f"{kind} to listen")
    return proc


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def read_events(port, path, cookie, until, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path, headers={"Cookie": f"sessionid={cookie}", "Accept": "text/event-stream"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    events, event, deadline = [], None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = response.fp.readline()
        if not line:
            break
        line = line.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "status":
            events.append(json.loads(line[6:]))
            if until(events[-1]):
                break
    conn.close()
    return events


@pytest.mark.parametrize("kind", ["runserver", "uvicorn"])
def test_progress_streams_live(kind, worker, user, client):
    from tests.tasks_web import web_slow

    client.force_login(user)
    cookie = client.cookies["sessionid"].value
    port = free_port()
    server = start_server(kind, port)
    try:
        status = web_slow.send_for(user, n=30, delay=0.1, label=kind)
        events = read_events(port, f"/tasks/api/tasks/{status.uuid}/events/", cookie,
                             until=lambda d: d["state"] == "Succeeded")
    finally:
        stop(server)
    steps = [e["completed_steps"] for e in events]
    assert events[-1]["state"] == "Succeeded", events[-1]
    # Several intermediate values arrived on one connection, in order.
    assert len({s for s in steps if 0 < s < 30}) >= 2, steps
    assert steps == sorted(steps)


@pytest.mark.parametrize("kind", ["uvicorn"])
def test_pages_work_under_asgi(kind, user, client):
    from tests.tasks_web import make_task

    task = make_task(user, "Under ASGI", "Succeeded")
    client.force_login(user)
    cookie = client.cookies["sessionid"].value
    port = free_port()
    server = start_server(kind, port)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", f"/tasks/{task.uuid}/", headers={"Cookie": f"sessionid={cookie}"})
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200 and "Under ASGI" in body
        conn.request("GET", f"/tasks/api/tasks/{task.uuid}/", headers={"Cookie": f"sessionid={cookie}"})
        response = conn.getresponse()
        assert json.loads(response.read())["name"] == "Under ASGI"
    finally:
        stop(server)
