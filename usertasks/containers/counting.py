"""Counting the children of a container that ended, and what follows a count.

A child's end costs its container O(1): in the transaction that stores the child's final state,
one ``UPDATE ... RETURNING`` adds 1 to a counter of the container (and to its
``completed_steps``) and reads the container back (:func:`count`; the children that end in one
writer batch are summed into one such UPDATE per container).  The row lock that UPDATE takes
orders concurrent ends, so the container's own end (``usertasks.transitions.complete_container``)
happens in exactly one transaction.  :func:`after_children` says what the container's rules
require once the count is in.
"""

from django.db import connections
from django.db.models import F

from .. import sql
from ..protocol import FAIL_FAST
from ..states import State

__all__ = ["COUNTERS", "INFO", "after_children", "count", "done", "info"]

#: The counters of the children that ended, by outcome.
COUNTERS = ("children_succeeded", "children_failed", "children_canceled", "children_skipped")
#: The counter of each final state of a child.
COUNTER_FOR: dict[str, str] = {
    State.SUCCEEDED: "children_succeeded",
    State.FAILED: "children_failed",
    State.CANCELED: "children_canceled",
}
#: The keyword of :func:`usertasks.transitions.children_ended` for a child entering each state
#: (Retrying is counted too: ``children_retried``).
KEY_FOR: dict[str, str] = {
    State.SUCCEEDED: "succeeded",
    State.FAILED: "failed",
    State.CANCELED: "canceled",
    State.RETRYING: "retried",
}
#: What :func:`info` and :func:`count` read of a container.
INFO = ("pk", "parent_id", "state", "worker", "children_total", "cancel_requested", "options", *COUNTERS)

#: What follows a count (:func:`after_children`).
STOP_STAGES = "stop_stages"  # a pipeline's stage failed or was canceled: the rest never run
NEXT_STAGE = "next_stage"  # a pipeline's stage succeeded: send the next one
CANCEL_REST = "cancel_rest"  # a fail-fast fan-out's child failed: cancel the others


def done():
    """The children that ended, as an expression over a container's row."""
    return F("children_succeeded") + F("children_failed") + F("children_canceled") + F("children_skipped")


def info(rows, parent_id):
    """The container ``parent_id`` as the rules read it (:data:`INFO`), or ``None``."""
    return rows.filter(pk=parent_id).values(*INFO).first()


def count(rows, parent_id, counts, retried, now):
    """Add ``counts`` (children that ended, by outcome: ``succeeded``, ``failed``, ``canceled``,
    ``skipped``) and ``retried`` to the counters of container ``parent_id`` (its steps grow by
    the children that ended) and return the row as :func:`info` reads it, or ``None`` if there is
    no such row (or nothing ended).  One ``UPDATE ... RETURNING`` where the database has it, of
    the same text whatever the counts (a prepared statement on PostgreSQL); an UPDATE and a
    SELECT elsewhere."""
    connection = connections[rows.db]
    ended = sum(counts.values())
    if not sql.supported(connection):
        update = {f"children_{k}": F(f"children_{k}") + v for k, v in counts.items() if v}
        if retried:
            update["children_retried"] = F("children_retried") + retried
        if ended:
            update["completed_steps"] = F("completed_steps") + ended
        if not rows.filter(pk=parent_id).update(modified=now, heartbeat=now, **update):
            return None
        return info(rows, parent_id) if ended else None
    when = connection.ops.adapt_datetimefield_value(now)
    params = [*(counts[c[len("children_") :]] for c in COUNTERS), retried, ended, when, when, parent_id]
    found = sql.execute(connection, sql.count_children_sql(connection, COUNTERS, INFO), params)
    if not found:
        return None
    row = dict(zip(INFO, found[0]))
    if not isinstance(row["options"], dict):  # JSON text, as Django's backends read it
        row["options"] = rows.model._meta.get_field("options").from_db_value(row["options"], None, connection)
    return row


def after_children(info, child_id, *, succeeded=0, failed=0, canceled=0):
    """What the container's rules require once ended children are counted (``info`` as
    :func:`count` returns it, the container still active): :data:`STOP_STAGES`,
    :data:`NEXT_STAGE`, :data:`CANCEL_REST`, or ``None``."""
    options = info["options"] or {}
    if "pipeline" in options:
        if failed or canceled or info["cancel_requested"] is not None:
            return STOP_STAGES
        if succeeded and child_id is not None:
            return NEXT_STAGE
        return None
    if failed and (options.get("fanout") or {}).get("policy") == FAIL_FAST:
        return CANCEL_REST
    return None
