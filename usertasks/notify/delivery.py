"""Delivery of the outbox: batches of due rows, each handed to its channel, the outcome
recorded on the row and as an event of its task."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, close_old_connections, connections, router, transaction
from django.db.models import F, Q
from django.utils import timezone

from ..conf import app_settings
from ..models import EventKind, UserTaskEvent, UserTaskNotification, UserTaskStatus
from ..text import clip
from .channels import Channel, Notice, get_channel, should_notify, status_link

logger = logging.getLogger("usertasks.notify")

#: Longest pause between two attempts of one delivery.
MAX_RETRY_DELAY = 3600.0


def retry_delay(attempts: int) -> float:
    """Seconds before the next try of a delivery that failed ``attempts`` times."""
    base = float(app_settings.NOTIFY_RETRY_DELAY)
    return min(base * 2 ** max(attempts - 1, 0), MAX_RETRY_DELAY)


def deliver_due(
    *, limit: int | None = None, using: str | None = None, channels: dict[str, Channel] | None = None
) -> int:
    """Deliver one batch of due notifications (at most ``limit``, default
    ``USERTASKS["NOTIFY_BATCH_SIZE"]``); returns how many rows it took.  ``channels``: channel
    instances to reuse across batches, by dotted path (filled as needed).

    The rows are claimed first (``NOTIFY_LEASE``), so two deliverers never take the same row
    while the claim holds; the rows, their tasks and users are read in one query, the tasks'
    artifacts in one more."""
    db = using or router.db_for_write(UserTaskNotification)
    limit = int(limit or app_settings.NOTIFY_BATCH_SIZE)
    channels = {} if channels is None else channels
    outbox = UserTaskNotification.objects.using(db)
    now = timezone.now()
    ids = list(outbox.due(now).order_by("due", "id").values_list("pk", flat=True)[:limit])
    if not ids:
        return 0
    token = uuid.uuid4().hex
    lease = now + timedelta(seconds=float(app_settings.NOTIFY_LEASE))
    claimed = outbox.due(now).filter(pk__in=ids).update(claim=token, claimed_until=lease)
    if not claimed:
        return 0
    rows = list(
        outbox.filter(pk__in=ids, claim=token)
        .select_related("status", "status__user")
        .prefetch_related("status__artifacts")
    )
    if len(rows) < claimed:  # rows whose tasks were deleted (the join leaves them out)
        outbox.filter(pk__in=ids, claim=token).exclude(pk__in=[r.pk for r in rows]).delete()
    sent, skipped, failed, events = [], [], [], []
    for row in rows:
        status = row.status
        if not should_notify(status, row.state):
            skipped.append(row.pk)
            continue
        attempt = row.attempts + 1
        try:
            channel = channels.get(row.channel)
            if channel is None:
                channel = channels[row.channel] = get_channel(row.channel)
            notice = Notice(
                status=status,
                state=row.state,
                link=status_link(status),
                id=row.pk,
                attempt=attempt,
                artifacts=list(status.artifacts.all()),
            )
            channel.send(notice)
        except Exception as exc:
            label = getattr(channels.get(row.channel), "label", None) or row.channel.rsplit(".", 1)[-1]
            error = clip(f"{type(exc).__name__}: {exc}", 2000)
            if attempt >= int(app_settings.NOTIFY_MAX_ATTEMPTS):
                due, text = None, f"Could not notify by {label} ({error}); gave up after {attempt} attempts."
            else:
                delay = retry_delay(attempt)
                due = now + timedelta(seconds=delay)
                text = f"Could not notify by {label} ({error}); next attempt in {delay:g} s."
            logger.warning("usertasks: task %s: %s", status.uuid, text)
            failed.append((row.pk, due, error))
            events.append(
                UserTaskEvent(status_id=status.pk, kind=EventKind.NOTIFICATION_FAILED, attempt=attempt, detail=text)
            )
        else:
            sent.append(row.pk)
            label = getattr(channel, "label", None) or row.channel
            events.append(
                UserTaskEvent(
                    status_id=status.pk, kind=EventKind.NOTIFIED, attempt=attempt, detail=f"Notified by {label}."
                )
            )
    _settle(db, token, sent, skipped, failed, events)
    return len(ids)


def _settle(db: str, token: str, sent: list[int], skipped: list[int], failed: list[Any], events: list[Any]) -> None:
    """Record the outcome of a batch, in one transaction: delivered rows, rows that need no
    notification (dropped), failed ones (grouped by their next attempt), and the events."""
    outbox = UserTaskNotification.objects.using(db)
    done = timezone.now()
    with transaction.atomic(using=db):
        if sent:
            outbox.filter(pk__in=sent, claim=token).update(
                sent=done, attempts=F("attempts") + 1, claim="", claimed_until=None, last_error=""
            )
        if skipped:
            outbox.filter(pk__in=skipped, claim=token).delete()
        groups: dict[tuple[Any, str], list[int]] = {}
        for pk, due, error in failed:
            groups.setdefault((due, error), []).append(pk)
        for (due, error), pks in groups.items():
            outbox.filter(pk__in=pks, claim=token).update(
                due=due, attempts=F("attempts") + 1, claim="", claimed_until=None, last_error=error
            )
        if events:
            try:
                with transaction.atomic(using=db):
                    UserTaskEvent.objects.using(db).bulk_create(events)
            except IntegrityError:
                # A task deleted while its notification was being sent: keep the others' events.
                alive = set(
                    UserTaskStatus.objects.using(db)
                    .filter(pk__in={e.status_id for e in events})
                    .values_list("pk", flat=True)
                )
                UserTaskEvent.objects.using(db).bulk_create([e for e in events if e.status_id in alive])


def drain(*, using: str | None = None, limit: int | None = None) -> int:
    """Deliver every notification due now (batch after batch); returns how many rows were
    taken.  What ``manage.py usertasks_notify`` runs."""
    channels: dict[str, Channel] = {}
    total = 0
    while True:
        n = deliver_due(using=using, limit=limit, channels=channels)
        total += n
        if not n:
            return total


def prune(*, using: str | None = None) -> int:
    """Delete outbox rows delivered (or given up) longer than ``USERTASKS["MAX_AGE"]`` ago;
    returns how many."""
    db = using or router.db_for_write(UserTaskNotification)
    cutoff = timezone.now() - app_settings.MAX_AGE
    old = Q(sent__lt=cutoff) | Q(sent__isnull=True, due__isnull=True, created__lt=cutoff)
    n, _ = UserTaskNotification.objects.using(db).filter(old).delete()
    return n


class Deliverer:
    """A thread that delivers the outbox: a batch whenever a commit of this process recorded
    notifications, and every ``NOTIFY_POLL_INTERVAL`` seconds (rows recorded by other
    processes, retries that came due, rows a dead deliverer had claimed)."""

    #: Seconds between two :func:`prune` runs.
    PRUNE_EVERY = 3600.0

    def __init__(self, *, using: str | None = None, busy: Callable[[], bool] | None = None) -> None:
        self.using = using
        self.busy = busy  # whether tasks are running in this process (then it paces itself)
        self.delivered = 0  # rows taken, for tests and benchmarks
        self.rounds = 0  # looks at the outbox
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usertasks-notify", daemon=True)

    def start(self) -> Deliverer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        self._stopping.set()
        UserTaskNotification.recorded.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        channels: dict[str, Channel] = {}
        wake = UserTaskNotification.recorded
        next_prune = time.monotonic()
        while not self._stopping.is_set():
            wake.clear()
            full = False
            rest = 0.0
            try:
                close_old_connections()
                limit = int(app_settings.NOTIFY_BATCH_SIZE)
                began = time.monotonic()
                n = deliver_due(limit=limit, using=self.using, channels=channels)
                self.delivered += n
                full = n >= limit
                if n and self.busy is not None and self.busy():
                    # Tasks run in this process: leave them most of its time (one GIL).
                    rest = (time.monotonic() - began) * max(float(app_settings.NOTIFY_PACE), 0.0)
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + self.PRUNE_EVERY
                    prune(using=self.using)
            except Exception:
                logger.exception("usertasks: delivering notifications failed; trying again later")
                self._close()
            self.rounds += 1
            if rest:
                self._stopping.wait(min(rest, 5.0))
            if not full:
                wake.wait(_interval())
        self._close()

    def _close(self) -> None:
        try:
            connections[self.using or router.db_for_write(UserTaskNotification)].close()
        except Exception as exc:
            logger.debug("usertasks: closing the deliverer's connection: %s", exc)


def _interval() -> float:
    try:
        return max(float(app_settings.NOTIFY_POLL_INTERVAL), 0.01)
    except (TypeError, ValueError):
        return 2.0


__all__ = ["Deliverer", "deliver_due", "drain", "prune", "retry_delay"]
