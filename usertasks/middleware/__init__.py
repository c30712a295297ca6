"""Dramatiq middleware of usertasks, one concern per module, and their place on a broker.

* :class:`UserTaskAbort` (``abort``): canceled messages are skipped; cancels reach running
  tasks through the abort poller it owns; tasks that ignore a cancel are interrupted.
* :class:`UserTaskTracking` (``tracking``): every run's start, retry and end, written through
  the per-process writer.
* :class:`UserTaskMetrics` (``metrics``): Prometheus metrics of the runs (when
  ``prometheus_client`` is installed).
* :class:`UserTaskUpkeep` (``upkeep``): runs the reaper and the purge, one worker at a time.
* :class:`UserTaskNotifications` (``notify``): the thread that delivers the notifications of
  finished tasks (``usertasks.notify``).

:func:`install` puts them on a broker in their place: tracking right before Dramatiq's
``Retries`` (``after_*`` hooks run in reverse order, so it sees the retry decision), abort
right before tracking (so a skipped message never shows as started), metrics right after
tracking (it sees the retry decision and the run's context), upkeep anywhere (last).  The app does it to the
configured broker when it is ready.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from dramatiq.middleware import Retries

from .abort import UserTaskAbort
from .metrics import UserTaskMetrics
from .notify import UserTaskNotifications
from .tracking import UserTaskTracking
from .upkeep import UserTaskUpkeep

__all__ = [
    "UserTaskAbort",
    "UserTaskMetrics",
    "UserTaskNotifications",
    "UserTaskTracking",
    "UserTaskUpkeep",
    "install",
    "problems",
]


def install(broker: Any) -> Any:
    """Add usertasks' middleware to ``broker`` where it belongs (idempotent); returns the
    broker (``None`` stays ``None``)."""
    if broker is None:
        return None
    if not any(isinstance(m, UserTaskTracking) for m in broker.middleware):
        if any(isinstance(m, Retries) for m in broker.middleware):
            broker.add_middleware(UserTaskTracking(), before=Retries)
        else:
            broker.add_middleware(UserTaskTracking())
    if not any(isinstance(m, UserTaskAbort) for m in broker.middleware):
        broker.add_middleware(UserTaskAbort(), before=UserTaskTracking)
    has = {type(m) for m in broker.middleware}
    if not any(issubclass(k, UserTaskMetrics) for k in has) and importlib.util.find_spec("prometheus_client"):
        broker.add_middleware(UserTaskMetrics(), after=UserTaskTracking)
    if not any(issubclass(k, UserTaskUpkeep) for k in has):
        broker.add_middleware(UserTaskUpkeep())
    if not any(isinstance(m, UserTaskNotifications) for m in broker.middleware):
        broker.add_middleware(UserTaskNotifications())
    return broker


def problems(broker: Any) -> tuple[bool, bool]:
    """``(missing, misplaced)`` for usertasks' middleware on ``broker``."""
    kinds = [type(m) for m in broker.middleware]
    ours = [i for i, k in enumerate(kinds) if issubclass(k, UserTaskTracking)]
    if not ours or not any(issubclass(k, UserTaskAbort) for k in kinds):
        return True, False
    retries = [i for i, k in enumerate(kinds) if issubclass(k, Retries)]
    misplaced = bool(retries) and ours[0] > retries[0]
    return False, misplaced
