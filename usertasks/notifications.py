"""Notifications of finished tasks: the email of the built-in email channel, and who is told.

A finished task's notifications are recorded in an outbox with its final state and delivered by
``usertasks.notify`` (see ``docs/notifications.md``).  Which outcomes notify is decided by the
task's ``notify`` option (kept in ``status.options["notify"]`` when given on the decorator) or
else by ``USERTASKS["NOTIFY"]``:

* ``True``: every outcome, except a cancel made by the requester themselves;
* ``False``: none;
* a collection of states, e.g. ``{"Succeeded", "Failed"}``: exactly those.

Rows with a parent (fan-out children) never notify: their container does.  Templates:
``usertasks/email/finished_subject.txt``, ``finished.txt`` and ``finished.html``.
"""

import logging

from .models import notify_states_for
from .notify import should_notify, status_link
from .notify.email import EmailChannel

logger = logging.getLogger(__name__)

__all__ = [
    "acts_on",
    "build_message",
    "notify_states",
    "notify_states_for",
    "on_task_finished",
    "send_notification",
    "should_notify",
    "status_link",
]


def notify_states(status):
    """The set of final states for which ``status`` notifies its requester."""
    return notify_states_for((status.options or {}).get("notify"))


def build_message(status, state=None):
    """The :class:`~django.core.mail.EmailMultiAlternatives` the email channel sends for
    ``status`` (not sent)."""
    return EmailChannel().message(status, state)


def send_notification(status, state=None):
    """Email ``status.user`` about ``status`` now, on this thread, if the options say so;
    returns whether sent.  (Workers do not call it: they deliver through the outbox.)"""
    state = state or status.state
    if not should_notify(status, state):
        return False
    if not getattr(status.user, "email", ""):
        return False
    EmailChannel().message(status, state).send()
    return True


def acts_on(parent_id, state, notify):
    """Whether :func:`on_task_finished` would email for a run with these hints."""
    return parent_id is None and state in notify_states_for(notify)


def on_task_finished(sender, status, state, parent_id=None, notify=None, **kwargs):
    """A :data:`usertasks.signals.task_finished` receiver that emails at once, on the thread
    that sends the signal.  Not connected by default (the outbox delivers the email channel's
    notifications off the threads that run tasks); kept for code that connects it itself."""
    if parent_id is not None:
        return
    if "status_id" in kwargs and state not in notify_states_for(notify):
        return
    try:
        send_notification(status, state)
    except Exception:
        logger.exception("usertasks: could not email the requester of task %s", status.uuid)
