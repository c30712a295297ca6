"""Notifications of finished tasks: channels, and the delivery of the outbox.

When a top-level task ends, the transaction that stores its final state also records one
:class:`~usertasks.models.UserTaskNotification` per channel of ``USERTASKS["NOTIFIERS"]``
(``usertasks.transitions``).  A deliverer (a thread of each worker process, owned by
:class:`usertasks.middleware.UserTaskNotifications`, or the ``usertasks_notify`` command) takes
the due rows in batches (:func:`deliver_due`), hands each to its channel, and records the
outcome as an event of the task: ``notified``, or ``notification_failed`` followed by a retry
with a growing delay.

A channel is a class with one method, ``send(notice)``, that delivers one :class:`Notice` or
raises; see ``docs/notifications.md``.
"""

from __future__ import annotations

from .channels import Channel, Notice, get_channel, should_notify, status_link
from .delivery import Deliverer, deliver_due, drain, prune

__all__ = [
    "Channel",
    "Deliverer",
    "Notice",
    "deliver_due",
    "drain",
    "get_channel",
    "prune",
    "should_notify",
    "status_link",
]
