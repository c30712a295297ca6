"""Tasks claimed when their messages were fetched, not started yet: watched for cancels.

A worker's Redis consumer (``usertasks.redis``) claims the tracked messages it fetches, a batch
at a time, in the fetch's own round trip, instead of each worker thread claiming its message in
a round trip of its own.  A cancel that comes between such a claim and the run sees the claim
and treats the task as running: it raises the flag.  The abort poller
(``usertasks.middleware.abort``) watches the flags of the tasks recorded here too, ends such a
task Canceled at once, and has its message skipped when a worker thread takes it.

This registry is the meeting point of the consumer, which records claims, and the abort
middleware, which takes them when a run begins and watches the rest.
"""

import threading
import time
from collections.abc import Callable

__all__ = ["FORGET_AFTER", "forget", "mark_canceled", "record", "take", "watched"]

#: Seconds after which a claim no longer watched is forgotten (its consumer went away with the
#: message; the broker delivers it again, and that delivery claims again).
FORGET_AFTER = 3600.0

_lock = threading.Lock()
_claimed: dict[
    int, tuple[int | None, float]
] = {}  # status id -> (parent id, monotonic time of the claim): claimed, not started
_canceled: set[int] = set()  # of those, the ones the poller already ended Canceled
#: Callables run (outside the lock) when the registry goes from empty to not empty: the poller
#: sleeps while it has nothing to watch.
listeners: list[Callable[[], None]] = []


def record(tasks: list[tuple[int, int | None]]) -> None:
    """Record first claims: ``tasks`` are ``(status_id, parent_id)`` pairs."""
    if not tasks:
        return
    now = time.monotonic()
    with _lock:
        idle = not _claimed
        for status_id, parent_id in tasks:
            _claimed[status_id] = (parent_id, now)
        woke = idle and bool(_claimed)
    if woke:
        for listener in listeners:
            listener()


def take(status_id: int) -> bool:
    """A worker thread begins the run of ``status_id``: stop watching it.  Returns whether the
    poller ended it Canceled meanwhile (its message must be skipped)."""
    with _lock:
        _claimed.pop(status_id, None)
        canceled = status_id in _canceled
        _canceled.discard(status_id)
    return canceled


def watched() -> dict[int, int | None]:
    """``{status id: parent id}`` of the claimed tasks not started nor canceled yet (claims
    older than :data:`FORGET_AFTER` are forgotten)."""
    if not _claimed:
        return {}
    horizon = time.monotonic() - FORGET_AFTER
    with _lock:
        for status_id in [k for k, (_, at) in _claimed.items() if at < horizon]:
            del _claimed[status_id]
            _canceled.discard(status_id)
        return {k: parent for k, (parent, _) in _claimed.items() if k not in _canceled}


def mark_canceled(status_id: int) -> bool:
    """The poller saw the flag of a watched task: returns ``True`` the first time (the caller
    ends it Canceled), ``False`` if it is not watched or already marked."""
    with _lock:
        if status_id not in _claimed or status_id in _canceled:
            return False
        _canceled.add(status_id)
        return True


def forget() -> None:
    """Forget everything (tests)."""
    with _lock:
        _claimed.clear()
        _canceled.clear()
