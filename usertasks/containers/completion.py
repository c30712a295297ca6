"""How a container ends once every child has: its outcome, its summary, its completion callback.

``usertasks.transitions.complete_container`` makes the change; this module says what it is
(:func:`outcome`, :func:`error`) and what follows the commit (:func:`finished`: the completion
callback, then ``task_finished``).  A callback is marked due (``CALLBACK_DUE``) in the
transaction that ends the container and unmarked once sent, so the reaper can send the callbacks
of containers whose process stopped in between (:func:`send_callback`).
"""

import logging
import time

import dramatiq
from django.db import OperationalError, transaction

from ..broker import enqueue_many
from ..models import UserTaskStatus
from ..protocol import ALLOW_FAILURES, CALLBACK_DUE, CONTAINER_OPTION, FAIL_FAST
from ..signals import emit_task_finished, task_finished
from ..states import State
from ..text import clip
from .counting import COUNTERS

logger = logging.getLogger("usertasks.containers")

__all__ = ["callback_spec", "error", "finished", "outcome", "send_callback", "spec_key", "summarize"]


def spec_key(options):
    """Where a container's options keep its spec: ``"pipeline"`` or ``"fanout"``."""
    return "pipeline" if "pipeline" in (options or {}) else "fanout"


def outcome(info):
    """``(final state, summary)`` of the container ``info`` (``counting.info``) once every child
    has ended, else ``None``.  A canceled container ends Canceled; a pipeline or a fail-fast
    fan-out ends Succeeded only if every child did (else Failed if one failed, else Canceled);
    a fan-out that allows failures ends Succeeded, its failures counted."""
    total = info["children_total"]
    if sum(info[c] for c in COUNTERS) < total:
        return None
    options = info["options"] or {}
    succeeded, failed = info["children_succeeded"], info["children_failed"]
    pipeline = "pipeline" in options
    policy = (options.get("fanout") or {}).get("policy", ALLOW_FAILURES)
    if info["cancel_requested"] is not None:
        state = State.CANCELED
    elif pipeline or policy == FAIL_FAST:
        state = State.SUCCEEDED if succeeded == total else State.FAILED if failed else State.CANCELED
    else:
        state = State.SUCCEEDED
    summary = summarize(
        total, succeeded, failed, info["children_canceled"], info["children_skipped"], pipeline=pipeline
    )
    return state, summary


def error(info, first_failure):
    """``(error, error_class)`` of a container that ends Failed, from its first failed child
    (``name``, ``error``, ``error_class``; ``None`` if none is left)."""
    what = "A stage failed" if "pipeline" in (info["options"] or {}) else "A subtask failed"
    if first_failure is None:
        return f"{what}.", ""
    text = clip(f"{what}: {first_failure['name']}: {first_failure['error']}", 4000)
    return text, (first_failure.get("error_class") or "")[:255]


def summarize(total, succeeded, failed=0, canceled=0, skipped=0, *, pipeline=False):
    """``"1,990 of 2,000 subtasks succeeded, 10 failed"``."""
    noun = "stage" if pipeline else "subtask"
    parts = [f"{succeeded:,} of {total:,} {noun}{'s' if total != 1 else ''} succeeded"]
    for number, word in ((failed, "failed"), (canceled, "canceled"), (skipped, "skipped")):
        if number:
            parts.append(f"{number:,} {word}")
    return ", ".join(parts)


def callback_spec(on_complete):
    """``on_complete`` as stored in the container's options (JSON), or ``None``.

    A :class:`dramatiq.Message` (``actor.message(...)``) is sent as it is; an actor is sent with
    one argument, the container's UUID (a string)."""
    if on_complete is None:
        return None
    if isinstance(on_complete, dramatiq.Message):
        return {
            "actor": on_complete.actor_name,
            "queue": on_complete.queue_name,
            "args": list(on_complete.args),
            "kwargs": dict(on_complete.kwargs),
            "options": dict(on_complete.options),
        }
    if isinstance(on_complete, dramatiq.Actor):
        return {
            "actor": on_complete.actor_name,
            "queue": on_complete.queue_name,
            "args": None,
            "kwargs": {},
            "options": {},
        }
    raise TypeError("on_complete takes an actor or a message (actor.message(...))")


def finished(pk, state, callback, db):
    """After the commit that ended container ``pk``: send its callback, then ``task_finished``."""
    if callback:
        send_callback(pk, callback, db)
    status = UserTaskStatus.objects.using(db).filter(pk=pk).first() if task_finished.receivers else None
    if status is not None:
        emit_task_finished(status, state)


def send_callback(pk, callback, db):
    """Send the completion callback of container ``pk``, then remove its ``CALLBACK_DUE`` mark.
    Returns whether it was sent (a failure is logged; the mark stays, so the reaper tries
    again)."""
    rows = UserTaskStatus.objects.using(db)
    try:
        args = callback["args"]
        if args is None:
            args = [str(rows.values_list("uuid", flat=True).get(pk=pk))]
        message: dramatiq.Message = dramatiq.Message(
            queue_name=callback["queue"],
            actor_name=callback["actor"],
            args=tuple(args),
            kwargs=callback["kwargs"],
            options=dict(callback["options"], **{CONTAINER_OPTION: pk}),
        )
        enqueue_many(dramatiq.get_broker(), [(message, None)])
    except Exception:
        logger.exception("usertasks: could not send the completion callback of task %s", pk)
        return False
    for attempt in range(6):
        try:
            with transaction.atomic(using=db):
                options = rows.select_for_update().filter(pk=pk).values_list("options", flat=True).first()
                if options is not None:
                    for key in ("fanout", "pipeline"):
                        if isinstance(options.get(key), dict):
                            options[key].pop(CALLBACK_DUE, None)
                    rows.filter(pk=pk).update(options=options)
            break
        except OperationalError:
            # SQLite refuses at once a transaction that read before it writes while another
            # connection writes ("database is locked"): short, so try it again.
            if attempt == 5:
                logger.exception("usertasks: the completion callback of task %s was sent but is still marked due", pk)
            else:
                time.sleep(0.02 * 2**attempt)
        except Exception:
            logger.exception("usertasks: the completion callback of task %s was sent but is still marked due", pk)
            break
    return True
