"""``status.cancel(by=user)``.

* Pending (also delayed) or Retrying: the row becomes Canceled at once, in one conditional
  UPDATE, and an abort flag is raised; the worker that receives the message checks the flag
  and the row before calling the actor and acknowledges the message without running the body.
* In Progress: ``cancel_requested`` / ``canceled_by`` are stored and the abort flag is raised;
  the task stops at its next ``step()`` / ``check_abort()`` (or is interrupted after its
  ``abort_grace``) and ends Canceled.
* Already final: nothing changes; returns ``False``.

Every cancel that takes effect records who asked (``canceled_by`` and the ``actor`` of an event).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import router, transaction
from django.utils import timezone

from . import transitions
from .abort import get_backend, set_flag
from .containers.cancel import cancel_contents
from .exceptions import AbortBackendError
from .models import UserTaskStatus
from .signals import test_case_commit_point
from .states import FINAL_STATES, State

logger = logging.getLogger("usertasks")

__all__ = ["ALREADY_FINAL", "CANCELED", "REQUESTED", "cancel", "cancel_task"]

#: Outcomes, stored on the instance as ``status.cancel_outcome`` after ``cancel()``.
CANCELED = "canceled"  # it had not started (or was waiting to retry): Canceled now
REQUESTED = "requested"  # it is running: it will stop and end Canceled
ALREADY_FINAL = "already_final"  # nothing to do


def _user(by: Any) -> Any:
    if by is None or getattr(by, "pk", None) is None or not getattr(by, "is_authenticated", True):
        return None
    return by


def cancel(status: UserTaskStatus, by: Any = None) -> bool:
    """``status.cancel(by=...)``: :func:`cancel_task`, and for a container (fan-out, pipeline)
    its children too: those that have not started are canceled now (one UPDATE), the running
    ones are asked to stop; the container ends with the last of them."""
    done = cancel_task(status, by=by)
    if done and status.is_container:
        cancel_contents(status, by=by)
    return done


def cancel_task(status: UserTaskStatus, by: Any = None) -> bool:
    """Cancel ``status`` (a :class:`~usertasks.models.UserTaskStatus`).

    Returns ``True`` when the cancel took effect (the task is Canceled, or will stop), ``False``
    when the task had already finished.  ``status`` is refreshed from the database and
    ``status.cancel_outcome`` tells which of ``"canceled"``, ``"requested"``, ``"already_final"``
    happened.  Raises :class:`~usertasks.exceptions.AbortBackendError` when the task is running
    and the abort flag cannot be raised (the request is stored; call again).
    """
    user = _user(by)
    db = router.db_for_write(UserTaskStatus)
    rows = UserTaskStatus.objects.using(db)
    outcome = ALREADY_FINAL
    for _ in range(5):  # the state can move between our two guarded UPDATEs; try again then
        # Read outside the transaction: on SQLite a read-then-write transaction can fail with
        # "database is locked" at once; the UPDATE below is guarded by this state anyway.
        found = rows.filter(pk=status.pk).values_list("state", "parent_id").first()
        if found is None:
            raise UserTaskStatus.DoesNotExist(f"task {status.pk} no longer exists")
        previous, parent_id = found
        if previous in FINAL_STATES:
            break
        now = timezone.now()
        if previous in (State.PENDING, State.RETRYING) and _claimed(status.pk):
            previous = State.IN_PROGRESS  # a worker has just taken it: ask it to stop
        with transaction.atomic(using=db):
            if previous in (State.PENDING, State.RETRYING):
                if transitions.cancel_not_started(rows, status.pk, previous, parent_id=parent_id, by=user, now=now):
                    outcome = CANCELED
                    break
            elif transitions.request_cancel(rows, status.pk, by=user, now=now):
                # In Progress (or claimed by a worker that has not stored its start yet)
                outcome = REQUESTED
                break
    else:  # pragma: no cover - the state kept changing under us
        raise RuntimeError(f"could not cancel task {status.pk}: its state keeps changing")

    if outcome == ALREADY_FINAL:
        logger.info("usertasks: task %s is already final; cancel ignored", status.pk)
    else:
        # After commit: a rolled-back cancel raises no flag.  For a task that has not started
        # the flag only saves the worker a query; for a running one it is how the cancel
        # reaches it, so a failure is reported.
        transaction.on_commit(lambda: _raise_flag(status.pk, outcome), using=db)
    status.refresh_from_db()
    status.cancel_outcome = outcome
    return outcome != ALREADY_FINAL


def _claimed(status_id: int) -> bool:
    """With an atomic abort store: raise the flag of a task that looks not started and tell
    whether a worker claimed it first (then its body may be running although the row still says
    Pending; see ``usertasks.abort.redis``).  Either way the flag is up before the row changes,
    so no worker can start the body after this returns ``False``."""
    if test_case_commit_point(transaction.get_connection(router.db_for_write(UserTaskStatus))):
        # In a Django TestCase nothing commits, so no worker can have the task, and a flag
        # raised now would outlive the rolled-back test (the next task with this key would
        # look canceled).
        return False
    try:
        backend = get_backend()
        if not backend.atomic_claims:
            return False
        return backend.cancel_pending(status_id)
    except Exception as exc:
        # The store is down: the database decides (workers that cannot claim take the path
        # where the body waits for its guarded start).
        logger.warning("usertasks: cannot reach the abort store to cancel task %s: %s", status_id, exc)
        return False


def _raise_flag(status_id: int, outcome: str) -> None:
    try:
        set_flag(status_id)
    except Exception as exc:
        if outcome == REQUESTED:
            raise AbortBackendError(
                f"The cancel of task {status_id} is recorded but cannot reach its worker: {exc}"
            ) from exc
        logger.warning("usertasks: could not raise the abort flag of canceled task %s: %s", status_id, exc)
