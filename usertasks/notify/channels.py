"""What a channel is given (:class:`Notice`), the base class of channels, and who is told."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.utils.module_loading import import_string

from ..conf import app_settings
from ..models import notify_states_for
from ..states import State


@dataclass
class Notice:
    """One notification to deliver: ``status`` (the task's row, with ``status.user`` and
    ``status.artifacts.all()`` loaded for the whole batch), the final ``state`` it entered,
    ``link`` (the absolute URL of its status page), ``id`` (the outbox row's id, the same on
    every attempt: a receiver can drop repeats by it) and ``attempt`` (1 for the first try)."""

    status: Any
    state: str
    link: str
    id: int
    attempt: int = 1
    artifacts: list[Any] = field(default_factory=list)


class Channel:
    """Base class of notification channels (``USERTASKS["NOTIFIERS"]``).

    A channel is made once per deliverer and reused for every notice it delivers: prepare what
    can be prepared (templates, sessions) in ``__init__``.  Its one method, :meth:`send`,
    delivers one :class:`Notice` or raises: the delivery is then retried later, with a growing
    delay, up to ``USERTASKS["NOTIFY_MAX_ATTEMPTS"]`` times.  It runs on a thread of its own,
    never on a thread that runs tasks, and may be called again for a notice already delivered
    (at least once: a deliverer that dies before it records the outcome)."""

    #: Shown in the task's events ("Notified by email.").
    label = "channel"

    def send(self, notice: Notice) -> None:
        raise NotImplementedError


def get_channel(path: str) -> Channel:
    """A new instance of the channel class at dotted ``path``."""
    return import_string(path)()


def status_link(status: Any) -> str:
    """The absolute URL of ``status``'s page (``USERTASKS["BASE_URL"]`` + its path)."""
    base = (app_settings.BASE_URL or "").rstrip("/")
    return base + status.get_absolute_url()


def should_notify(status: Any, state: str) -> bool:
    """Whether ``status`` tells its requester that it ended ``state``: a top-level task, an
    outcome its ``notify`` option (or ``USERTASKS["NOTIFY"]``) names, and not a cancel made by
    the requester themselves when every outcome notifies (there is nothing to tell them)."""
    if status.parent_id is not None:
        return False
    options = status.options or {}
    notify = options.get("notify")
    if state not in notify_states_for(notify):
        return False
    explicit = notify if notify is not None else app_settings.NOTIFY
    return not (
        state == State.CANCELED
        and explicit is True
        and status.canceled_by_id is not None
        and status.canceled_by_id == status.user_id
    )
