"""Server-sent events for one task's page.

Each stream sends a ``status`` event carrying the full detail JSON whenever something visible
changed; it ends when the task is final or after ``USERTASKS["LIVE_STREAM_SECONDS"]`` (the
browser's ``EventSource`` reconnects by itself).

* Under WSGI (``runserver``, gunicorn) the stream is a plain generator holding its worker
  thread: it reads the task's row every ``POLL_SECONDS`` (one indexed query).
* Under ASGI (uvicorn, daphne) the stream is an async generator that holds no thread.  One
  watcher thread per process (:class:`_Hub`) reads the rows of every watched task in one query
  every ``POLL_SECONDS``, renders the changed ones and hands each stream its event through an
  ``asyncio.Queue``; it stops when no stream is open.  The thread that Django's handler keeps
  for the request's synchronous parts (middleware, the view) is let go once the response
  starts (:func:`_release_request_thread`).

The page's JavaScript falls back to polling the JSON detail when the stream fails.
"""

import asyncio
import logging
import threading
import time
from contextlib import contextmanager
from typing import Any

from django.db import connections
from django.http import HttpResponse, StreamingHttpResponse

from ..conf import app_settings
from ..states import FINAL_STATES

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5
IN_CHUNK = 500  # rows per "pk IN (...)" read of the watcher thread
KEEPALIVE_SECONDS = 15.0
SNAPSHOT_FIELDS = (
    "state",
    "completed_steps",
    "total_steps",
    "message",
    "attempts",
    "cancel_requested",
    "modified",
    "finished",
)


_streams_lock = threading.Lock()
_streams = 0


def open_streams():
    """How many event streams this process is serving now."""
    return _streams


@contextmanager
def _counted():
    global _streams
    with _streams_lock:
        _streams += 1
    try:
        yield
    finally:
        with _streams_lock:
            _streams -= 1


def _snapshot(status_model, pk):
    return status_model.objects.filter(pk=pk).values_list(*SNAPSHOT_FIELDS).first()


def _step(status_model, pk, last, render):
    """One read: returns ``(snapshot, chunk or None, done)``."""
    snap = _snapshot(status_model, pk)
    if snap is None:
        return None, "event: gone\ndata: {}\n\n", True
    chunk = None
    if snap != last:
        status = status_model.objects.get(pk=pk)
        chunk = "event: status\ndata: " + render(status) + "\n\n"
    return snap, chunk, snap[0] in FINAL_STATES


class _Watch:
    """One async stream's subscription: the task, how to render it, where to deliver."""

    __slots__ = ("last", "loop", "model", "pk", "queue", "render")

    def __init__(self, model, pk, render, loop):
        self.model, self.pk, self.render, self.loop = model, pk, render, loop
        self.queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
        self.last = None

    def deliver(self, chunk, done):
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (chunk, done))
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            _hub.remove(self)


class _Hub:
    """The one thread per process that reads the rows of every task an async stream watches."""

    def __init__(self):
        self._lock = threading.Lock()
        self._watches = set()
        self._thread = None
        self._wake = threading.Event()

    def add(self, watch):
        with self._lock:
            self._watches.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="usertasks-live", daemon=True)
                self._thread.start()
        self._wake.set()  # a new stream gets its first event at once

    def remove(self, watch):
        with self._lock:
            self._watches.discard(watch)

    def running(self):
        """Whether the watcher thread is alive (tests wait for it to stop)."""
        with self._lock:
            return self._thread is not None

    def _run(self):
        try:
            while True:
                with self._lock:
                    watches = list(self._watches)
                    if not watches:
                        self._thread = None
                        return
                self._wake.clear()
                try:
                    self._tick(watches)
                except Exception:
                    logger.exception("usertasks: the live updates could not read the tasks")
                    connections.close_all()  # a broken connection is replaced at the next read
                self._wake.wait(POLL_SECONDS)
        finally:
            connections.close_all()

    def _tick(self, watches):
        by_model: dict[Any, list[_Watch]] = {}
        for watch in watches:
            by_model.setdefault(watch.model, []).append(watch)
        for model, group in by_model.items():
            pks = sorted({w.pk for w in group})
            snaps: dict[Any, tuple] = {}
            for i in range(0, len(pks), IN_CHUNK):
                rows = model.objects.filter(pk__in=pks[i : i + IN_CHUNK]).values_list("pk", *SNAPSHOT_FIELDS)
                snaps.update((row[0], row[1:]) for row in rows)
            changed = [w for w in group if snaps.get(w.pk) != w.last]
            gone = [w for w in changed if w.pk not in snaps]
            for watch in gone:
                self.remove(watch)
                watch.deliver("event: gone\ndata: {}\n\n", True)
            changed = [w for w in changed if w.pk in snaps]
            if not changed:
                continue
            changed_pks = sorted({w.pk for w in changed})
            statuses: dict[Any, Any] = {}
            for i in range(0, len(changed_pks), IN_CHUNK):
                batch = model.objects.filter(pk__in=changed_pks[i : i + IN_CHUNK]).prefetch_related("artifacts")
                statuses.update((s.pk, s) for s in batch)
            for watch in changed:
                status = statuses.get(watch.pk)
                if status is None:  # deleted between the two reads: the next read says so
                    continue
                watch.last = snaps[watch.pk]
                done = watch.last[0] in FINAL_STATES
                if done:
                    self.remove(watch)
                watch.deliver("event: status\ndata: " + watch.render(status) + "\n\n", done)


_hub = _Hub()


def watcher_running():
    """Whether this process's watcher thread (ASGI streams) is running."""
    return _hub.running()


async def _release_request_thread():
    """Let go of the thread Django's ASGI handler keeps for this request.

    The handler runs the synchronous parts of a request (``MiddlewareMixin`` middleware, a
    synchronous view) on one thread per request, kept until the response is complete: for an
    event stream, its whole life.  Once the stream has started those parts are done, so that
    thread closes its database connections and ends; a later synchronous step of the request
    (closing the response) gets a fresh thread for its moment.  Without asgiref's per-request
    executors (another version) this does nothing and the thread stays, as before."""
    from asgiref.sync import SyncToAsync, sync_to_async

    context_var = getattr(SyncToAsync, "thread_sensitive_context", None)
    executors = getattr(SyncToAsync, "context_to_thread_executor", None)
    context = context_var.get(None) if context_var is not None else None
    if context is None or executors is None or context not in executors:
        return
    await sync_to_async(connections.close_all, thread_sensitive=True)()
    executor = executors.pop(context, None)
    if executor is not None:
        executor.shutdown(wait=False)


def _is_asgi(request):
    from django.core.handlers.asgi import ASGIRequest

    return isinstance(request, ASGIRequest)


def event_stream(request, status, render):
    """A ``text/event-stream`` response for ``status``; ``render(row) -> str`` (JSON text)."""
    seconds = float(app_settings.LIVE_STREAM_SECONDS or 0)
    if seconds <= 0:
        return HttpResponse(status=204)  # live stream disabled: the page polls instead
    model, pk = type(status), status.pk

    def sync_events():
        with _counted():
            yield "retry: 2000\n\n"
            last, deadline, quiet_since = None, time.monotonic() + seconds, time.monotonic()
            while True:
                last, chunk, done = _step(model, pk, last, render)
                if chunk:
                    quiet_since = time.monotonic()
                    yield chunk
                if done or time.monotonic() >= deadline:
                    return
                if time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                    quiet_since = time.monotonic()
                    yield ": keep-alive\n\n"
                time.sleep(POLL_SECONDS)

    async def async_events():
        loop = asyncio.get_running_loop()
        watch = _Watch(model, pk, render, loop)
        with _counted():
            await _release_request_thread()
            yield "retry: 2000\n\n"
            _hub.add(watch)
            try:
                deadline = loop.time() + seconds
                quiet_since = loop.time()
                while True:
                    now = loop.time()
                    if now >= deadline:
                        return
                    wait = min(deadline - now, quiet_since + KEEPALIVE_SECONDS - now)
                    try:
                        chunk, done = await asyncio.wait_for(watch.queue.get(), max(wait, 0))
                    except asyncio.TimeoutError:
                        if loop.time() >= deadline:
                            return
                        quiet_since = loop.time()
                        yield ": keep-alive\n\n"
                        continue
                    quiet_since = loop.time()
                    yield chunk
                    if done:
                        return
            finally:
                _hub.remove(watch)

    response = StreamingHttpResponse(
        async_events() if _is_asgi(request) else sync_events(), content_type="text/event-stream; charset=utf-8"
    )
    response["Cache-Control"] = "no-cache, no-store"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response
