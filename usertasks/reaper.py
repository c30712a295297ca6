"""The reaper: no task stays In Progress or Pending for ever.

* **Worker lost**: a task In Progress whose heartbeat is older than ``USERTASKS["STALE_AFTER"]``
  had its worker die.  If its message is still in the broker (a Redis broker hands the
  messages of a dead worker to another one), the row goes back to Pending with a ``requeued``
  event and the next run takes it over; otherwise it ends Failed ("worker lost").
  A task whose message a *live* worker holds (fetched, not acknowledged, the worker's broker
  heartbeat fresh) is left alone: that worker's writes are held up, and it will store the end.
* **Never started**: a task Pending (or Retrying) for ``USERTASKS["PENDING_TIMEOUT"]`` past its
  due time whose message is no longer in the broker (queue flushed, broker data lost) ends
  Failed ("never started").  Only brokers whose contents can be read are checked (Redis); with
  others these tasks are left alone.
* Final tasks release what they held: the dedupe key, and their abort flags.
* **Callback not sent**: a fan-out or pipeline container that ended more than a minute ago with
  its completion callback still marked due (the process that ended it stopped between the
  commit and the send) gets its callback sent.

Every change is a conditional UPDATE that only applies if the row is still as it was read, so a
task that moves meanwhile is left to its worker.  The workers run it every
``USERTASKS["REAP_EVERY"]`` seconds (``usertasks.middleware.upkeep``); ``manage.py
usertasks_reap`` and the ``usertasks_reap`` actor run it from a scheduler of your own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import router
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import transitions
from .abort import clear_flags, get_backend
from .actors import maintenance_actor
from .broker import configured_broker
from .conf import app_settings
from .containers import completion
from .models import EventKind, UserTaskStatus
from .protocol import CALLBACK_DUE
from .redis.queues import held_message_ids, live_message_ids
from .states import FINAL_STATES, State

logger = logging.getLogger("usertasks.reaper")

__all__ = ["ReapResult", "held_message_ids", "live_message_ids", "reap", "reap_lost_tasks"]

WORKER_LOST = "The worker running this task stopped unexpectedly."
NEVER_STARTED = "The task could not be started: its message was lost."
REQUEUED = "The worker running this task was lost; the task will run again."
#: A container's completion callback still marked due this long after the container ended was
#: not sent (its process stopped after the commit): the reaper sends it.
CALLBACK_GRACE = timedelta(minutes=1)


@dataclass
class ReapResult:
    worker_lost: list = field(default_factory=list)  # ids now Failed
    requeued: list = field(default_factory=list)  # ids back to Pending (message still queued)
    never_started: list = field(default_factory=list)  # ids now Failed
    unchecked: int = 0  # overdue Pending tasks left alone: the broker's contents are unknown
    held: list = field(default_factory=list)  # ids without heartbeat left alone: a live worker holds their message
    flags_cleared: int = 0
    callbacks: list = field(default_factory=list)  # ids of containers whose callback was sent

    def __str__(self) -> str:
        return (
            f"{len(self.worker_lost)} worker lost, {len(self.requeued)} requeued, "
            f"{len(self.never_started)} never started, {self.unchecked} unchecked, "
            f"{len(self.held)} held by live workers, "
            f"{self.flags_cleared} abort flags cleared, {len(self.callbacks)} completion callbacks sent"
        )


def reap(now: datetime | None = None, *, dry_run: bool = False, broker: Any = None) -> ReapResult:
    """One pass of the reaper; returns a :class:`ReapResult`."""
    now = now or timezone.now()
    broker = broker or configured_broker()
    db = router.db_for_write(UserTaskStatus)
    rows = UserTaskStatus.objects.using(db)
    result = ReapResult()

    stale = list(
        # stale() leaves out containers that wait for their children (they have no run of their
        # own); a container whose worker died during its body is reaped like any task.
        rows.stale(now).values(
            "pk", "state", "worker", "heartbeat", "queue_name", "attempts", "cancel_requested", "parent_id"
        )
    )
    cutoff = now - timedelta(seconds=float(app_settings.PENDING_TIMEOUT))
    overdue = list(
        rows.filter(state=State.PENDING, is_container=False)
        .exclude(pk__in=rows.waiting_stages().values("pk"))  # no message is due for them yet
        .annotate(due=Coalesce("eta", "created"))
        .filter(due__lt=cutoff)
        .values("pk", "state", "attempts", "queue_name", "modified", "parent_id")
    ) + list(
        rows.filter(state=State.RETRYING, is_container=False, modified__lt=cutoff).values(
            "pk", "state", "attempts", "queue_name", "modified", "parent_id"
        )
    )
    live = held = None
    if stale or overdue:
        try:
            live = live_message_ids(broker, [r["queue_name"] for r in stale + overdue])
            held = held_message_ids(broker, [r["queue_name"] for r in stale]) if stale else set()
        except Exception as exc:
            logger.warning("usertasks reaper: cannot read the broker (%s); only heartbeats are used", exc)
            live = held = None
        task_ids = dict(rows.filter(pk__in=[r["pk"] for r in stale + overdue]).values_list("pk", "task_id"))

    def fail(row: Any, where: dict[str, Any], text: str, kind: str, bucket: list[int]) -> None:
        if dry_run or transitions.end_lost(rows, row, where, text=text, kind=kind, now=now):
            bucket.append(row["pk"])

    for row in stale:
        # (In Progress, or a custom state of a Celery task)
        where = {"state": row["state"], "worker": row["worker"], "heartbeat": row["heartbeat"]}
        if held is not None and task_ids.get(row["pk"]) in held:
            # A live worker has its message and will store its end: its status writes are held
            # up (a database that stopped answering it), its run is not lost.
            result.held.append(row["pk"])
            continue
        if live is not None and task_ids.get(row["pk"]) in live:
            if dry_run or transitions.requeue_lost(rows, row, where, detail=REQUEUED, now=now):
                result.requeued.append(row["pk"])
        else:
            fail(row, where, WORKER_LOST, EventKind.WORKER_LOST, result.worker_lost)

    for row in overdue:
        if live is None:
            result.unchecked += 1
            continue
        if task_ids.get(row["pk"]) in live:
            continue  # still queued: it will run when a worker for its queue takes it
        where = {"state": row["state"], "attempts": row["attempts"], "modified": row["modified"]}
        fail(row, where, NEVER_STARTED, EventKind.NEVER_STARTED, result.never_started)

    # Abort flags of final tasks (left over by a race, or by a skipped message never delivered).
    try:
        backend = get_backend()
        flagged = backend.all_flagged()
        if flagged:
            active = set(rows.filter(pk__in=flagged).exclude(state__in=FINAL_STATES).values_list("pk", flat=True))
            done = sorted(flagged - active)
            if done and not dry_run:
                clear_flags(done, quiet=False)
            result.flags_cleared = len(done)
        if result.worker_lost or result.never_started:
            clear_flags(result.worker_lost + result.never_started)
    except Exception as exc:
        logger.warning("usertasks reaper: cannot clean abort flags: %s", exc)

    _send_due_callbacks(rows, now, dry_run, result)

    if result.held:
        logger.warning(
            "usertasks reaper: %d task(s) without a heartbeat for %ss are held by live workers "
            "(their status writes are held up); left alone: %s",
            len(result.held),
            app_settings.STALE_AFTER,
            result.held[:20],
        )
    if result.worker_lost or result.never_started or result.requeued or result.callbacks:
        logger.warning("usertasks reaper: %s", result)
    return result


def _send_due_callbacks(rows: Any, now: datetime, dry_run: bool, result: ReapResult) -> None:
    """Containers that ended more than :data:`CALLBACK_GRACE` ago with their completion callback
    still marked due: the process that ended them stopped before it sent it.  Send it now."""
    due = (
        rows.filter(is_container=True, state__in=FINAL_STATES, finished__lt=now - CALLBACK_GRACE)
        .filter(Q(**{f"options__fanout__{CALLBACK_DUE}": True}) | Q(**{f"options__pipeline__{CALLBACK_DUE}": True}))
        .values_list("pk", "options")
    )
    for pk, options in due:
        spec = next(options[k] for k in ("fanout", "pipeline") if (options.get(k) or {}).get(CALLBACK_DUE))
        if dry_run or completion.send_callback(pk, spec["on_complete"], rows.db):
            result.callbacks.append(pk)


@maintenance_actor(actor_name="usertasks_reap", max_retries=0, time_limit=10 * 60 * 1000)
def reap_lost_tasks() -> None:
    """One reaper pass, for a scheduler of your own (the workers already reap every
    ``REAP_EVERY`` seconds)."""
    logger.info("usertasks reaper: %s", reap())
