"""Acknowledging a message after its final state commits, without holding a worker thread.

Dramatiq acknowledges a message from the worker thread that ran it, right after the
middleware's ``after_process_message``.  Were that thread to wait there for the writer's group
commit, each thread would carry one change per transaction, and a process of 8 threads could
never finish more than 8 tasks per commit.  Instead :class:`UserTaskTracking` hands the
acknowledgement of a run whose end needs nothing else after its commit to this module:

* :func:`install` wraps ``post_process_message`` of each consumer thread (Dramatiq calls it
  with every finished message; it acknowledges or rejects).  For a message carrying a pending
  end, the wrapper passes the acknowledgement to the process's :class:`Acker` and returns, so
  the worker thread takes the next message at once.
* The acker thread waits for each such end to be committed, then runs the original
  ``post_process_message``.  Ends are committed in the order they were submitted, so waiting
  for them one after another costs no more than waiting for the last.

A message is thus still acknowledged only after its final state is durable; what changes is
which thread waits.  The number of messages a process holds unacknowledged stays bounded by
Dramatiq's prefetch (twice the worker threads), which also bounds how many ends can share a
transaction.  A crash before the acknowledgement leaves the message in the broker, and its
redelivery finds the row final and is skipped (``docs/guarantees.md``).
"""

import logging
import os
import threading
from collections import deque

logger = logging.getLogger("usertasks.acks")

__all__ = ["Acker", "defer", "deferring", "drain", "install"]

#: Queue names whose consumer threads acknowledge through the acker.
_queues = set()

#: Message attribute carrying the writer op of a run's end until the message is post-processed.
PENDING = "_usertasks_pending_end"


def install(consumer_thread):
    """Wrap the ``post_process_message`` of a Dramatiq consumer thread (idempotent)."""
    original = consumer_thread.post_process_message
    if getattr(original, "usertasks_original", None) is not None:
        return

    def post_process_message(message):
        op = getattr(message, PENDING, None)
        if op is None or op.done.is_set():
            return original(message)
        setattr(message, PENDING, None)
        get_acker().defer(op, original, message)

    post_process_message.usertasks_original = original
    consumer_thread.post_process_message = post_process_message
    _queues.add(consumer_thread.queue_name)


def deferring(message):
    """Whether the acknowledgement of ``message`` can be handed to the acker."""
    return message.queue_name in _queues


def defer(message, op):
    """Acknowledge ``message`` once ``op`` is committed instead of when its thread is done."""
    setattr(message, PENDING, op)


class Acker:
    """One thread per process: acknowledges messages once their ends are committed."""

    def __init__(self):
        self.pid = os.getpid()
        self._cond = threading.Condition()
        self._queue = deque()
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="usertasks-acker", daemon=True)
        self._thread.start()

    def defer(self, op, post_process, message):
        with self._cond:
            self._queue.append((op, post_process, message))
            self._cond.notify_all()

    def drain(self, timeout=30):
        """Wait until every deferred acknowledgement has been made; ``False`` on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def _run(self):
        while True:
            with self._cond:
                while not self._queue:
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait()
                self._busy = True
                op, post_process, message = self._queue.popleft()
            try:
                op.done.wait()
                post_process(message)  # Dramatiq's own: retries broker errors, logs the rest
            except Exception:
                logger.exception("usertasks: could not acknowledge message %s", message.message_id)


_acker = None
_lock = threading.Lock()


def get_acker():
    global _acker
    a = _acker
    if a is None or a.pid != os.getpid():
        with _lock:
            if _acker is None or _acker.pid != os.getpid():
                _acker = Acker()
            a = _acker
    return a


def drain(timeout=30):
    """Wait for this process's deferred acknowledgements (at consumer shutdown)."""
    a = _acker
    if a is not None and a.pid == os.getpid():
        return a.drain(timeout)
    return True
