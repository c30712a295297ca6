"""Django signals sent by usertasks.

``task_finished(sender=UserTaskStatus, status=<row>, state=<final state>)`` is sent once a task's
final state has been stored (in the process that stored it)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from django.dispatch import Signal

task_finished = Signal()

#: ``dispatch_uid`` of the built-in email receiver (``usertasks.notifications``).
NOTIFIER_UID = "usertasks.notifications"

#: ``dispatch_uid`` of a :data:`task_finished` receiver -> ``acts(parent_id=, state=, notify=)``,
#: which tells from the signal's hints alone whether that receiver would do anything for a run.
#: The worker acknowledges a run without waiting for its commit only when every connected
#: receiver is listed here and none would act (``usertasks.redis.acks``); a receiver connected
#: without an entry is assumed to act on every run.
ACTS: dict[str, Callable[..., bool]] = {}


def receivers_act(parent_id: int | None, state: str, notify: Any) -> bool:
    """Whether any receiver of :data:`task_finished` would act on a run with these hints."""
    for entry in task_finished.receivers:
        receiver = entry[1]
        if isinstance(receiver, weakref.ReferenceType) and receiver() is None:
            continue  # connected weakly and gone; Django drops the entry later
        acts = ACTS.get(entry[0][0])
        if acts is None or acts(parent_id=parent_id, state=state, notify=notify):
            return True
    return False


_FROM_ROW = object()


def emit_task_finished(status: Any, state: str, *, notify: Any = _FROM_ROW) -> None:
    """Send :data:`task_finished` for ``status`` (a row, or a lazy object loading it) with the
    hints receivers can decide from without touching the row (``notify``: the task's option,
    read from the row unless given); receivers' errors are logged."""
    import logging

    from .models import UserTaskStatus

    if notify is _FROM_ROW:
        notify = (status.options or {}).get("notify")
    hints = {"status_id": status.pk, "parent_id": status.parent_id, "notify": notify}
    for receiver, response in task_finished.send_robust(sender=UserTaskStatus, status=status, state=state, **hints):
        if isinstance(response, Exception):
            logging.getLogger("usertasks").error("usertasks: task_finished receiver %r failed: %r", receiver, response)


def send_task_finished(status_id: int, state: str, *, using: str | None = None) -> None:
    """Send :data:`task_finished` for a task that a cancel or the reaper made final (outside a
    worker run), once the current transaction commits."""
    from django.db import transaction

    def send() -> None:
        from .models import UserTaskStatus

        status = UserTaskStatus.objects.using(using).filter(pk=status_id).first()
        if status is not None:
            emit_task_finished(status, state)

    if not task_finished.receivers:
        return
    if test_case_commit_point(transaction.get_connection(using)):
        send()
    else:
        transaction.on_commit(send, using=using)


def test_case_commit_point(connection: Any) -> bool:
    """Whether the current transaction is a Django ``TestCase``'s, which is rolled back and never
    commits (so its on-commit callbacks never run): :data:`task_finished` is then sent at once,
    when the change is made, as django-user-tasks' tests expect.  Nothing is written to Redis on
    that account (abort flags wait for a real commit)."""
    blocks: list[Any] = getattr(connection, "atomic_blocks", None) or []
    return bool(blocks) and getattr(blocks[0], "_from_testcase", False)
