"""Email the requester when a task finishes.

Connected to :data:`usertasks.signals.task_finished` in ``UserTasksConfig.ready()`` (the signal
is sent by the tracking middleware once the final state is stored).  Which outcomes notify is
decided by the task's ``notify`` option (kept in ``status.options["notify"]`` when given on the
decorator) or else by ``USERTASKS["NOTIFY"]``:

* ``True``: every outcome, except a cancel made by the requester themselves;
* ``False``: none;
* a collection of states, e.g. ``{"Succeeded", "Failed"}``: exactly those.

Rows with a parent (fan-out children) never email: their container does.  Templates:
``usertasks/email/finished_subject.txt``, ``finished.txt`` and ``finished.html``.
"""

import logging

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string
from django.utils import translation

from .conf import app_settings
from .states import FINAL_STATES, State

logger = logging.getLogger(__name__)


def notify_states(status):
    """The set of final states for which ``status`` emails its requester."""
    return notify_states_for((status.options or {}).get("notify"))


def notify_states_for(value):
    """The final states that notify, for a task ``notify`` option (``None``: the setting)."""
    if value is None:
        value = app_settings.NOTIFY
    if value is True:
        return set(FINAL_STATES)
    if not value:
        return set()
    if isinstance(value, str):
        value = [value]
    return {State(v) for v in value if v in State.values}


def should_notify(status, state):
    if status.parent_id is not None:
        return False
    if state not in notify_states(status):
        return False
    options = status.options or {}
    explicit = options.get("notify") if options.get("notify") is not None else app_settings.NOTIFY
    # Not when they canceled it themselves: there is nothing to tell them.
    return not (
        state == State.CANCELED
        and explicit is True
        and status.canceled_by_id is not None
        and status.canceled_by_id == status.user_id
    )


def status_link(status):
    base = (app_settings.BASE_URL or "").rstrip("/")
    return base + status.get_absolute_url()


def build_message(status, state=None):
    """The :class:`~django.core.mail.EmailMultiAlternatives` for ``status`` (not sent)."""
    user = status.user
    state = state or status.state
    language = getattr(user, "language", None) or getattr(settings, "LANGUAGE_CODE", "en")
    with translation.override(language):
        context = {
            "task": status,
            "state": State(state),
            "state_text": State(state).label,
            "user": user,
            "link": status_link(status),
            "artifacts": list(status.artifacts.all()),
        }
        subject = " ".join(render_to_string("usertasks/email/finished_subject.txt", context).split())
        text = render_to_string("usertasks/email/finished.txt", context)
        html = render_to_string("usertasks/email/finished.html", context)
    message = EmailMultiAlternatives(subject=subject, body=text, to=[user.email])
    message.attach_alternative(html, "text/html")
    return message


def send_notification(status, state=None):
    """Email ``status.user`` about ``status`` if the options say so; returns whether sent."""
    state = state or status.state
    if not should_notify(status, state):
        return False
    if not getattr(status.user, "email", ""):
        return False
    build_message(status, state).send()
    return True


def acts_on(parent_id, state, notify):
    """Whether :func:`on_task_finished` may email for a run with these hints."""
    return parent_id is None and state in notify_states_for(notify)


def on_task_finished(sender, status, state, parent_id=None, notify=None, **kwargs):
    """Receiver of :data:`usertasks.signals.task_finished`.  Decides from the signal's hints
    first, so a task that does not email never loads its row."""
    if parent_id is not None:
        return
    if "status_id" in kwargs and state not in notify_states_for(notify):
        return
    try:
        send_notification(status, state)
    except Exception:
        logger.exception("usertasks: could not email the requester of task %s", status.uuid)
