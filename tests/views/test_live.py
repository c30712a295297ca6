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


def server_threads(pid):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads: line")


STREAMS = 200


async def open_streams(port, paths, cookie):
    """Open one event stream per path; return the connections once each has sent its first
    ``status`` event."""
    import asyncio

    # At most 20 requests are being set up at once: each holds a database connection until its
    # stream has started (then none), and PostgreSQL allows 100 connections by default.
    starting = asyncio.Semaphore(20)

    async def one(path):
        async with starting:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: sessionid={cookie}\r\n"
                         "Accept: text/event-stream\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            assert b"text/event-stream" in head
            await read_status(reader)
        return reader, writer

    return await asyncio.gather(*(one(p) for p in paths))


async def read_status(reader):
    """The data of the next ``status`` event on a stream (chunked transfer framing skipped)."""
    event = None
    while True:
        line = (await reader.readline()).decode().rstrip("\r\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "status":
            return json.loads(line[6:])


def test_asgi_streams_hold_no_thread(user, client):
    """200 open event streams under uvicorn: the server's thread count stays flat (it was one
    thread per stream) and every stream still gets the next change of its task."""
    import asyncio

    from tests.tasks_web import make_task
    from usertasks.models import UserTaskStatus

    tasks = [make_task(user, f"Watched {i}", "In Progress", total_steps=10, completed_steps=1) for i in range(20)]
    client.force_login(user)
    cookie = client.cookies["sessionid"].value
    port = free_port()
    server = start_server("uvicorn", port)
    try:
        paths = [f"/tasks/api/tasks/{tasks[i % len(tasks)].uuid}/events/" for i in range(STREAMS)]

        async def scenario():
            # Warm up: one request of each kind, so lazily started threads exist before counting.
            warm = await open_streams(port, paths[:1], cookie)
            for _, writer in warm:
                writer.close()
            await asyncio.sleep(0)
            before = server_threads(server.pid)
            streams = await open_streams(port, paths, cookie)
            during = server_threads(server.pid)
            # Every stream sees the next change of its task.
            await asyncio.to_thread(UserTaskStatus.objects.filter(pk__in=[t.pk for t in tasks]).update,
                                    completed_steps=5)
            updates = await asyncio.wait_for(asyncio.gather(*(read_status(r) for r, _ in streams)), 60)
            still = server_threads(server.pid)
            for _, writer in streams:
                writer.close()
            return before, during, still, updates

        before, during, still, updates = asyncio.run(scenario())
        print(f"\nuvicorn threads: {before} before, {during} with {STREAMS} open streams, {still} after an update")
        assert all(u["completed_steps"] == 5 for u in updates)
        # At most the watcher thread and a thread or two of the event loop's own: never one per stream.
        assert during - before <= 3, (before, during)
        assert still - before <= 3, (before, still)
    finally:
        stop(server)


def test_asgi_stream_in_process(user):
    """The async stream through Django's ASGI handler (AsyncClient): a finished task sends one
    event and ends; a deleted one says ``gone``; the watcher thread stops afterwards."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    from tests.tasks_web import make_task
    from usertasks.views import live

    done = make_task(user, "Done", "Succeeded", total_steps=2, completed_steps=2)
    running = make_task(user, "Running", "In Progress")
    client = AsyncClient()
    client.force_login(user)

    async def body(task, stop_after=None):
        response = await client.get(f"/tasks/api/tasks/{task.uuid}/events/")
        assert response.status_code == 200 and response["Content-Type"].startswith("text/event-stream")
        chunks = []
        async for chunk in response.streaming_content:
            chunks.append(chunk.decode() if isinstance(chunk, bytes) else chunk)
            if stop_after and stop_after(chunks):
                from asgiref.sync import sync_to_async

                await sync_to_async(stop_after.action)()
                stop_after = None
        return "".join(chunks)

    text = async_to_sync(body)(done)
    assert text.startswith("retry: ") and text.count("event: status") == 1 and '"state": "Succeeded"' in text

    def first_event(chunks):
        return "event: status" in "".join(chunks)

    first_event.action = lambda: running.delete()
    text = async_to_sync(body)(running, first_event)
    assert text.count("event: status") == 1 and text.endswith("event: gone\ndata: {}\n\n")
    wait_for(lambda: not live.watcher_running(), timeout=10, message="the watcher thread to stop")
