"""Finding the Dramatiq broker and putting usertasks' middleware on it."""

import logging

import dramatiq
from dramatiq.middleware import Retries

logger = logging.getLogger("usertasks")


def configured_broker():
    """The global Dramatiq broker if one has been set (django-dramatiq sets it), else ``None``.

    Unlike :func:`dramatiq.get_broker`, never creates a default broker as a side effect."""
    import dramatiq.broker

    return dramatiq.broker.global_broker


def install_middleware(broker=None):
    """Add :class:`~usertasks.middleware.UserTaskTracking` to ``broker`` (default: the global one),
    right before ``Retries`` so it sees the retry decision, and
    :class:`~usertasks.middleware.UserTaskAbort` right before it.  Idempotent; returns the broker."""
    from .middleware import UserTaskAbort, UserTaskTracking

    broker = broker or configured_broker()
    if broker is None:
        return None
    if not any(isinstance(m, UserTaskTracking) for m in broker.middleware):
        if any(isinstance(m, Retries) for m in broker.middleware):
            broker.add_middleware(UserTaskTracking(), before=Retries)
        else:
            broker.add_middleware(UserTaskTracking())
    # Cancel checks come right before tracking, so a skipped message never shows as started.
    if not any(isinstance(m, UserTaskAbort) for m in broker.middleware):
        broker.add_middleware(UserTaskAbort(), before=UserTaskTracking)
    return broker


def middleware_problems(broker):
    """``(missing, misplaced)`` for usertasks' middleware on ``broker``."""
    from .middleware import UserTaskAbort, UserTaskTracking

    kinds = [type(m) for m in broker.middleware]
    ours = [i for i, k in enumerate(kinds) if issubclass(k, UserTaskTracking)]
    if not ours or not any(issubclass(k, UserTaskAbort) for k in kinds):
        return True, False
    retries = [i for i, k in enumerate(kinds) if issubclass(k, Retries)]
    misplaced = bool(retries) and ours[0] > retries[0]
    return False, misplaced




#: Messages per pipeline (one round trip) in :func:`enqueue_many` on a Redis broker.
PIPELINE_SIZE = 500


class EnqueueFailed(Exception):
    """Raised by :func:`enqueue_many`: ``sent`` messages were sent, the rest were not."""

    def __init__(self, sent, error):
        super().__init__(str(error))
        self.sent = sent
        self.error = error


def enqueue_many(broker, items):
    """Send ``(message, delay)`` pairs in order through ``broker``'s own ``enqueue`` (its
    middleware hooks included).  On a Redis broker the messages go in pipelined ``MULTI``/``EXEC``
    chunks of :data:`PIPELINE_SIZE`, one round trip each and all or nothing per chunk; other
    brokers get one ``enqueue`` per message.  Raises :class:`EnqueueFailed` with how many were
    sent when one fails."""
    items = list(items)
    if len(items) > 1 and _pipelines(broker):
        step = PIPELINE_SIZE
    else:
        step = 1
    sent = 0
    for start in range(0, len(items), step):
        chunk = items[start:start + step]
        try:
            if step == 1:
                broker.enqueue(chunk[0][0], delay=chunk[0][1])
            else:
                _enqueue_pipelined(broker, chunk)
        except Exception as exc:
            raise EnqueueFailed(sent, exc) from exc
        sent += len(chunk)
    return sent


def _pipelines(broker):
    try:
        from dramatiq.brokers.redis import RedisBroker
    except ImportError:  # pragma: no cover - redis not installed
        return False
    return isinstance(broker, RedisBroker) and "dispatch" in getattr(broker, "scripts", {})


class _IntoPipeline:
    """Dramatiq's dispatch script, queued on a pipeline instead of run at once."""

    def __init__(self, script, pipe):
        self.script = script
        self.pipe = pipe

    def __call__(self, keys=(), args=(), client=None):
        return self.script(keys=keys, args=args, client=self.pipe)


def into_pipeline(broker, pipe):
    """A copy of a Redis ``broker`` whose dispatch script (enqueue, ack, nack...) is queued on
    ``pipe`` instead of run: Dramatiq's own code fills the pipeline, ``pipe.execute()`` sends it."""
    import copy

    shadow = copy.copy(broker)
    shadow.scripts = dict(broker.scripts, dispatch=_IntoPipeline(broker.scripts["dispatch"], pipe))
    return shadow


def _enqueue_pipelined(broker, chunk):
    """The broker's ``enqueue`` for each message, queued on one transaction pipeline, then sent."""
    pipe = broker.client.pipeline(transaction=True)
    shadow = into_pipeline(broker, pipe)
    for message, delay in chunk:
        shadow.enqueue(message, delay=delay)
    pipe.execute()


__all__ = ["EnqueueFailed", "configured_broker", "enqueue_many", "install_middleware", "middleware_problems", "dramatiq"]
