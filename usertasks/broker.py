"""Finding the Dramatiq broker and putting usertasks' middleware on it."""

import logging

import dramatiq
from dramatiq.middleware import Retries

from .rediscalls import Script

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




#: Messages per round trip in :func:`enqueue_many` on a Redis broker.
PIPELINE_SIZE = 500


class EnqueueFailed(Exception):
    """Raised by :func:`enqueue_many`: ``sent`` messages were sent, the rest were not."""

    def __init__(self, sent, error):
        super().__init__(str(error))
        self.sent = sent
        self.error = error


def enqueue_many(broker, items):
    """Send ``(message, delay)`` or ``(message, delay, options)`` items in order through
    ``broker`` (``options`` are added to the message's), with its middleware's enqueue hooks
    for each message.  On a Redis broker the messages go in chunks of :data:`PIPELINE_SIZE`,
    one round trip and all or nothing per chunk (:func:`_enqueue_scripted`, or a ``MULTI``/
    ``EXEC`` pipeline of the broker's own ``enqueue`` where a subclass overrides it, a single
    message through that ``enqueue``); other brokers get one ``enqueue`` per message.  On
    Dramatiq's own Redis broker, a push onto an empty queue wakes its idle consumers
    (:mod:`usertasks.wakeup`).  Raises :class:`EnqueueFailed` with how many were
    sent when one fails."""
    items = list(items)
    send = _enqueue_chunk(broker)
    if send is _enqueue_pipelined and len(items) == 1:
        send = None  # the broker's own enqueue: a pipeline of one would only cost more
    step = PIPELINE_SIZE if send is not None else 1
    sent = 0
    for start in range(0, len(items), step):
        chunk = items[start:start + step]
        try:
            if send is None:
                message, delay, *options = chunk[0]
                broker.enqueue(message.copy(options=options[0]) if options else message, delay=delay)
            else:
                send(broker, chunk)
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


def _enqueue_chunk(broker):
    """How :func:`enqueue_many` sends a chunk to ``broker``, or ``None`` (one at a time)."""
    if not _pipelines(broker):
        return None
    from dramatiq.brokers.redis import RedisBroker

    if type(broker).enqueue is RedisBroker.enqueue and type(broker).__getattr__ is RedisBroker.__getattr__:
        return _enqueue_scripted
    return _enqueue_pipelined


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
    for message, delay, *options in chunk:
        shadow.enqueue(message.copy(options=options[0]) if options else message, delay=delay)
    pipe.execute()


# KEYS[1]: the broker's namespace.  ARGV: a queue name and how many messages follow for it, then
# the Redis id and the data of each; again for the next queue.  What the "enqueue" command of
# Dramatiq's dispatch script does, for many messages at once; and a publish on the wake channel
# of each queue that was empty (usertasks.wakeup).
_ENQUEUE_MANY = """
local i = 1
while i < #ARGV do
  local queue = KEYS[1] .. ":" .. ARGV[i]
  local messages = queue .. ".msgs"
  local idle = redis.call("llen", queue) == 0
  local last = i + 1 + 2 * tonumber(ARGV[i + 1])
  for j = i + 2, last, 2 do
    redis.call("hset", messages, ARGV[j], ARGV[j + 1])
    redis.call("rpush", queue, ARGV[j])
  end
  if idle then
    redis.call("publish", queue .. ".wake", "")
  end
  i = last + 1
end
"""
_ENQUEUE_MANY_SCRIPT = Script(_ENQUEUE_MANY)


def _enqueue_scripted(broker, chunk):
    """``RedisBroker.enqueue`` for each message of ``chunk``, in ONE script call.

    Per message it does what Dramatiq's own ``enqueue`` does (a Redis id of its own, the delay
    queue and ``eta`` for a delayed message, ``before_enqueue`` hooks, the message stored in the
    queue's hash and its id pushed on the queue's list), without a dispatch call each: a
    pipelined dispatch costs about 100 µs of Python per message, this a third of it.  Atomic per
    chunk: a ``before_enqueue`` hook that raises ``MiddlewareError`` sends nothing of it.  The
    ``after_enqueue`` hooks run once the chunk is stored."""
    from dramatiq import Message
    from dramatiq.common import current_millis, dq_name

    from .sending import random_uuids

    before, after = _hooks(broker, "enqueue")
    queues = {}  # queue name -> [redis id, data, ...], in order
    sent = []
    for (message, delay, *options), redis_id in zip(chunk, random_uuids(len(chunk))):
        queue_name = message.queue_name
        extra = {"redis_message_id": str(redis_id)}
        if options:
            extra = dict(options[0], **extra)
        if delay is not None:
            queue_name = dq_name(queue_name)
            extra["eta"] = current_millis() + delay
        message = Message(
            queue_name=queue_name, actor_name=message.actor_name, args=message.args, kwargs=message.kwargs,
            options={**message.options, **extra}, message_id=message.message_id,
            message_timestamp=message.message_timestamp,
        )
        before(message, delay)
        queues.setdefault(queue_name, []).extend((extra["redis_message_id"], message.encode()))
        sent.append((message, delay))
    args = []
    for queue_name, entries in queues.items():
        args += (queue_name, len(entries) // 2, *entries)
    _ENQUEUE_MANY_SCRIPT(broker.client, (broker.namespace,), args)
    for message, delay in sent:
        after(message, delay)


def _hooks(broker, signal):
    """``(before, after)``: ``broker.emit_before(signal, ...)`` and ``emit_after``, calling only
    the middleware that define the hook (Dramatiq's loop calls every middleware's no-op too:
    two dozen calls per message).  Same order and errors as Dramatiq's."""
    from dramatiq import Broker
    from dramatiq.middleware import Middleware, MiddlewareError

    cls = type(broker)
    if cls.emit_before is not Broker.emit_before or cls.emit_after is not Broker.emit_after:
        return (lambda *a: broker.emit_before(signal, *a)), (lambda *a: broker.emit_after(signal, *a))
    names = ("before_" + signal, "after_" + signal)
    own = [[(m, getattr(m, name)) for m in broker.middleware
            if getattr(type(m), name, None) is not getattr(Middleware, name)] for name in names]
    logger_ = broker.logger

    def before(*args):
        for middleware, hook in own[0]:
            try:
                hook(broker, *args)
            except MiddlewareError:
                raise
            except Exception:
                logger_.critical("Unexpected failure in %s of %r.", names[0], middleware, exc_info=True)

    def after(*args):
        for middleware, hook in reversed(own[1]):
            try:
                hook(broker, *args)
            except Exception:
                logger_.critical("Unexpected failure in %s of %r.", names[1], middleware, exc_info=True)

    return before, after


__all__ = ["EnqueueFailed", "configured_broker", "enqueue_many", "install_middleware", "middleware_problems", "dramatiq"]
