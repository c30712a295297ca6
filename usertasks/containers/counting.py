"""Counting the children of a container that ended, and what follows a count.

A child's end costs its container O(1): in the transaction that stores the child's final state,
one ``UPDATE ... RETURNING`` adds 1 to a counter of the container (and to its
``completed_steps``) and reads the container back (:func:`count`; the children that end in one
writer batch are summed into one such UPDATE per container).  The row lock that UPDATE takes
orders concurrent ends, so the container's own end (``usertasks.transitions.complete_container``)
happens in exactly one transaction.  :func:`after_children` says what the container's rules
require once the count is in.

**Steps.**  Every child counts for one step of its container until it has run: a container of
``n`` children starts at ``0 / n``.  While a child runs with a known total of ``t`` steps, it
counts for ``t`` steps of which its own completed ones are done (:func:`share`: its steps beyond
the one); once it has ended it counts for ``t`` steps, all done.  The writer adds the
difference to the container in the transaction that stores the child's progress, summed per
container for each batch, in the same UPDATE as the children that ended (``steps``,
``total``): O(1) per write, whatever the number of children.

**Outcome counters** (``task.count(...)``, ``status.counts``): a run's new counts are added to
its container in the same way; the container's JSON is read and rewritten under the row lock
that counter UPDATE holds (:func:`merge`), so concurrent writers never lose an update, on any
database.
"""

from django.db import connections
from django.db.models import F

from .. import sql
from ..protocol import FAIL_FAST
from ..states import FINAL_STATES, State

__all__ = ["COUNTERS", "INFO", "after_children", "count", "done", "info", "merge", "ordered", "recount", "share"]

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
INFO = ("pk", "parent_id", "state", "worker", "children_total", "cancel_requested", "options", "counts", *COUNTERS)
#: The outcome counters shown first, in this order (``ordered``).
FIRST_COUNTS = ("succeeded", "failed", "skipped")

#: What follows a count (:func:`after_children`).
STOP_STAGES = "stop_stages"  # a pipeline's stage failed or was canceled: the rest never run
NEXT_STAGE = "next_stage"  # a pipeline's stage succeeded: send the next one
CANCEL_REST = "cancel_rest"  # a fail-fast fan-out's child failed: cancel the others


def done():
    """The children that ended, as an expression over a container's row."""
    return F("children_succeeded") + F("children_failed") + F("children_canceled") + F("children_skipped")


def share(completed, total, state):
    """The steps a child adds to its container beyond the one step every child counts for, as
    ``(done, total)``: ``(0, 0)`` before it runs, between runs (Retrying) and while its total is
    unknown; ``(min(completed, t), t - 1)`` while it runs with ``t`` steps (``t - 1`` more than
    the one); ``(t - 1, t - 1)`` once it has ended (the step its end adds makes ``t``)."""
    if not total or total < 1:
        return 0, 0
    total = int(total)
    if state == State.IN_PROGRESS:
        return min(max(int(completed or 0), 0), total), total - 1
    if state in FINAL_STATES:
        return total - 1, total - 1
    return 0, 0


def merge(base, delta):
    """``base`` with ``delta`` added to it, counter by counter (a new dict)."""
    out = dict(base or {})
    for name, n in (delta or {}).items():
        out[name] = int(out.get(name, 0)) + int(n)
    return out


def ordered(counts):
    """``counts`` as ``[(name, n), ...]``: ``succeeded``, ``failed``, ``skipped`` first (those
    there are), then the others by name."""
    counts = counts if isinstance(counts, dict) else {}
    first = [(name, counts[name]) for name in FIRST_COUNTS if name in counts]
    return first + sorted((k, v) for k, v in counts.items() if k not in FIRST_COUNTS)


def recount(rows, parent_id):
    """``(completed_steps, total_steps)`` of container ``parent_id`` from its children's rows
    (:func:`share` of each, plus the one step each counts for): what the counts add up to, read
    back in one aggregate query when they cannot be known otherwise (a container's body run
    again after it fanned out)."""
    from django.db.models import Case, Q, Sum, Value, When
    from django.db.models.functions import Coalesce, Least

    row = rows.filter(pk=parent_id).values("children_total", *COUNTERS).first()
    if row is None:
        return None
    known = Q(total_steps__gt=0)
    running = known & Q(state=State.IN_PROGRESS)
    ended = known & Q(state__in=FINAL_STATES, started__isnull=False)
    extra = rows.filter(parent_id=parent_id).aggregate(
        done=Coalesce(
            Sum(
                Case(
                    When(running, then=Least(F("completed_steps"), F("total_steps"))),
                    When(ended, then=F("total_steps") - 1),
                    default=Value(0),
                )
            ),
            Value(0),
        ),
        more=Coalesce(
            Sum(Case(When(running | ended, then=F("total_steps") - 1), default=Value(0))),
            Value(0),
        ),
    )
    done_steps = sum(row[c] for c in COUNTERS)
    return done_steps + int(extra["done"]), row["children_total"] + int(extra["more"])


def info(rows, parent_id):
    """The container ``parent_id`` as the rules read it (:data:`INFO`), or ``None``."""
    return rows.filter(pk=parent_id).values(*INFO).first()


def count(rows, parent_id, counts, retried, now, *, steps=0, total=0, tallies=None):
    """Add ``counts`` (children that ended, by outcome: ``succeeded``, ``failed``, ``canceled``,
    ``skipped``) and ``retried`` to the counters of container ``parent_id`` (its steps grow by
    the children that ended, and by ``steps`` of ``total`` more: :func:`share`), and
    ``tallies`` to its outcome counters; return the row as :func:`info` reads it, or ``None`` if
    there is no such row (or nothing ended).  One ``UPDATE ... RETURNING`` where the database
    has it, of the same text whatever the counts (a prepared statement on PostgreSQL); an
    UPDATE and a SELECT elsewhere.  New outcome counters cost one more UPDATE, made under the
    row lock the first one took."""
    connection = connections[rows.db]
    ended = sum(counts.values())
    if not sql.supported(connection):
        update = {f"children_{k}": F(f"children_{k}") + v for k, v in counts.items() if v}
        if retried:
            update["children_retried"] = F("children_retried") + retried
        if ended or steps:
            update["completed_steps"] = F("completed_steps") + ended + steps
        if total:
            update["total_steps"] = F("total_steps") + total
        if not rows.filter(pk=parent_id).update(modified=now, heartbeat=now, **update):
            return None
        if tallies:
            found = rows.select_for_update().filter(pk=parent_id).values_list("counts", flat=True).first()
            rows.filter(pk=parent_id).update(counts=merge(found, tallies))
        return info(rows, parent_id) if ended else None
    when = connection.ops.adapt_datetimefield_value(now)
    params = [
        *(counts[c[len("children_") :]] for c in COUNTERS),
        retried,
        ended + steps,
        total,
        when,
        when,
        parent_id,
    ]
    found = sql.execute(connection, sql.count_children_sql(connection, COUNTERS, INFO), params)
    if not found:
        return None
    row = dict(zip(INFO, found[0]))
    for name in ("options", "counts"):
        if not isinstance(row[name], dict):  # JSON text, as Django's backends read it
            row[name] = rows.model._meta.get_field(name).from_db_value(row[name], None, connection)
    if tallies:
        row["counts"] = merge(row["counts"], tallies)
        rows.filter(pk=parent_id).update(counts=row["counts"])
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
