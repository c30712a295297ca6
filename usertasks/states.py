"""Task states (the OEP-3 strings) and the transitions allowed between them."""

from django.db import models
from django.utils.translation import gettext_lazy as _


class State(models.TextChoices):
    PENDING = "Pending", _("Pending")
    IN_PROGRESS = "In Progress", _("In Progress")
    RETRYING = "Retrying", _("Retrying")
    SUCCEEDED = "Succeeded", _("Succeeded")
    FAILED = "Failed", _("Failed")
    CANCELED = "Canceled", _("Canceled")


#: The six states.  Any other value of ``state`` is a *custom state*: django-user-tasks'
#: ``set_state("Updating")`` stores its text there (the compatibility layer).  A custom state is
#: In Progress for everything else: pages, API, heartbeats, the reaper, cancel and purge.
STANDARD_STATES: tuple[str, ...] = tuple(State.values)
#: States in which a task is not running (everything else is In Progress or a custom state).
NOT_RUNNING = (State.PENDING, State.RETRYING, State.SUCCEEDED, State.FAILED, State.CANCELED)

#: States a task can still leave.
ACTIVE_STATES = (State.PENDING, State.IN_PROGRESS, State.RETRYING)
#: States a task never leaves.
FINAL_STATES = (State.SUCCEEDED, State.FAILED, State.CANCELED)

#: For each target state, the states it may be entered from.  Every state change is a
#: conditional UPDATE over this table, so a late or repeated hook is a no-op and of two racing
#: changes only one wins.
ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    State.PENDING: (State.IN_PROGRESS, State.RETRYING),  # requeued (worker shutdown)
    State.IN_PROGRESS: (State.PENDING, State.RETRYING),
    # A run failed and will run again; from Pending too: a Celery task (the compatibility
    # layer) retried before its start was recorded.
    State.RETRYING: (State.IN_PROGRESS, State.PENDING),
    State.SUCCEEDED: ACTIVE_STATES,
    State.FAILED: ACTIVE_STATES,
    State.CANCELED: ACTIVE_STATES,
}


def effective(state: str) -> str:
    """``state``, or In Progress for a custom state."""
    return state if state in STANDARD_STATES else State.IN_PROGRESS


def is_active(state: str) -> bool:
    """Whether a task in ``state`` can still change (custom states included)."""
    return state not in FINAL_STATES
