"""Server-sent events for one task's page.

The stream reads the task's row every ``POLL_SECONDS`` (one indexed query) and sends a ``status``
event carrying the full detail JSON whenever something visible changed; it ends when the task is
final or after ``USERTASKS["LIVE_STREAM_SECONDS"]`` (the browser's ``EventSource`` reconnects by
itself).  Under WSGI (``runserver``, gunicorn) it is a plain generator holding one worker thread;
under ASGI it is an async generator that holds no thread between reads.  The page's JavaScript
falls back to polling the JSON detail when the stream fails.
"""

import asyncio
import threading
import time
from contextlib import contextmanager

from django.http import HttpResponse, StreamingHttpResponse

from ..conf import app_settings
from ..states import FINAL_STATES

POLL_SECONDS = 0.5
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
        from asgiref.sync import sync_to_async

        step = sync_to_async(_step)
        with _counted():
            yield "retry: 2000\n\n"
            last, deadline, quiet_since = None, time.monotonic() + seconds, time.monotonic()
            while True:
                last, chunk, done = await step(model, pk, last, render)
                if chunk:
                    quiet_since = time.monotonic()
                    yield chunk
                if done or time.monotonic() >= deadline:
                    return
                if time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                    quiet_since = time.monotonic()
                    yield ": keep-alive\n\n"
                await asyncio.sleep(POLL_SECONDS)

    response = StreamingHttpResponse(
        async_events() if _is_asgi(request) else sync_events(), content_type="text/event-stream; charset=utf-8"
    )
    response["Cache-Control"] = "no-cache, no-store"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response
