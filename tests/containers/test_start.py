"""Fan-out writes its children in chunks, each committed and sent before the next one is
written; a body interrupted half-way resumes where it stopped; a cancel or a fail-fast failure
that arrives while the children are being written stops the writing.  Drives ``fan_out()`` in
this process (no worker): the messages stay in the test Redis, where they are counted."""

import contextlib
import time

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from usertasks import Aborted, TaskContext
from usertasks.protocol import FAIL_FAST
from usertasks.transitions import children_ended
from usertasks.models import EventKind, UserTaskStatus
from usertasks.states import State

from .. import tasks_fanout as t

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "dramatiq:default"
N = 700  # chunks of 100, 150, 150, 150, 150 with FANOUT_BATCH_SIZE = 150


@pytest.fixture(autouse=True)
def small_chunks(settings, redis):
    settings.USERTASKS = dict(getattr(settings, "USERTASKS", {}), FANOUT_BATCH_SIZE=150)
    redis.delete(QUEUE, f"{QUEUE}.msgs")
    yield
    redis.delete(QUEUE, f"{QUEUE}.msgs")


def parent_ctx(user, attempt=1, row=None):
    if row is None:
        row = UserTaskStatus.objects.create(
            user=user, task_id=f"fan-chunks-{time.monotonic_ns()}", task_class="fan_parent", name="parent",
            state=State.IN_PROGRESS, started=timezone.now(), attempts=attempt,
        )
    return row, TaskContext(status_id=row.pk, message_id=row.task_id, actor_name="fan_parent", attempt=attempt)


def items(label):
    return [{"i": i, "label": label} for i in range(N)]


@contextlib.contextmanager
def on_chunk(redis, action):
    """Call ``action(k)`` before the first INSERT of child rows of the k-th chunk (k = 1, 2,
    ...) runs; a chunk may take several INSERTs (SQLite's limit on parameters).  Chunks are
    told apart by the messages already sent.  Queries are captured, so every statement goes
    through Django's cursor (and its wrappers).  Yields the queue's length at each chunk."""
    sent = []
    table = UserTaskStatus._meta.db_table

    def wrapper(execute, sql, params, many, context):
        if sql.lstrip().upper().startswith("INSERT") and table in sql.split("(")[0]:
            queued = redis.llen(QUEUE)
            if not sent or sent[-1] != queued:
                sent.append(queued)
                action(len(sent))
        return execute(sql, params, many, context)

    with CaptureQueriesContext(connection), connection.execute_wrapper(wrapper):
        yield sent


def names(row):
    return sorted(UserTaskStatus.objects.filter(parent=row).values_list("name", flat=True))


def test_each_chunk_is_sent_before_the_next_is_written(user, redis):
    row, ctx = parent_ctx(user)
    with on_chunk(redis, lambda k: None) as sent:
        ctx.fan_out(t.fan_child, items("chunks"))
    assert sent == [0, 100, 250, 400, 550]
    assert redis.llen(QUEUE) == N
    row.refresh_from_db()
    assert row.is_container and row.children_total == N == row.total_steps
    assert row.options["fanout"]["calls"] == [N] and row.options["fanout"]["closed"] == 1
    assert names(row) == sorted(f"Child {i}" for i in range(N))


def test_an_interrupted_fan_out_resumes_where_it_stopped(user, redis):
    row, ctx = parent_ctx(user)

    def database_goes_away(k):
        if k == 3:
            raise OperationalError("server closed the connection unexpectedly")

    with pytest.raises(OperationalError), on_chunk(redis, database_goes_away):
        ctx.fan_out(t.fan_child, items("resume"))
    # The first two chunks were committed and sent; the call is recorded as not finished.
    assert UserTaskStatus.objects.filter(parent=row).count() == 250
    assert redis.llen(QUEUE) == 250
    row.refresh_from_db()
    assert row.children_total == N and row.options["fanout"]["closed"] == 0

    # The retry (the same body, the same items) writes only the missing children.
    _, retry = parent_ctx(user, attempt=2, row=row)
    retry.fan_out(t.fan_child, items("resume"))
    assert names(row) == sorted(f"Child {i}" for i in range(N))  # each exactly once
    assert redis.llen(QUEUE) == N
    row.refresh_from_db()
    assert row.children_total == N == row.total_steps
    assert row.options["fanout"] == {"policy": "allow_failures", "calls": [N], "closed": 1}
    assert row.events.filter(kind=EventKind.NOTE, detail__startswith="Started").count() == 1

    # A third run finds the call complete: nothing more is written or sent.
    _, third = parent_ctx(user, attempt=3, row=row)
    third.fan_out(t.fan_child, items("resume"))
    assert UserTaskStatus.objects.filter(parent=row).count() == N
    assert redis.llen(QUEUE) == N


def test_a_cancel_while_children_are_written_stops_the_writing(user, redis):
    row, ctx = parent_ctx(user)

    def cancel(k):
        if k == 2:  # committed with the second chunk, as a cancel from the web would be
            UserTaskStatus.objects.filter(pk=row.pk).update(cancel_requested=timezone.now())

    with pytest.raises(Aborted), on_chunk(redis, cancel):
        ctx.fan_out(t.fan_child, items("cancel"))
    children = UserTaskStatus.objects.filter(parent=row)
    assert children.count() == 250  # no chunk after the cancel
    assert not children.exclude(state=State.CANCELED).exists()
    row.refresh_from_db()
    assert (row.children_total, row.children_canceled, row.completed_steps) == (N, N, N)
    assert row.options["fanout"]["closed"] == 1 and row.options["fanout"]["unwritten"] == {"0": 450}
    assert row.events.filter(detail__contains="450 subtasks not yet written were not started").exists()


def test_a_fail_fast_failure_while_children_are_written_stops_the_writing(user, redis):
    row, ctx = parent_ctx(user)

    def first_child_fails(k):
        if k == 2:  # as the writer stores a child's failure: in the same transaction, counted
            child = UserTaskStatus.objects.filter(parent=row).order_by("pk").first()
            UserTaskStatus.objects.filter(pk=child.pk).update(state=State.FAILED, finished=timezone.now())
            children_ended(UserTaskStatus.objects, row.pk, failed=1, child_id=child.pk)

    with on_chunk(redis, first_child_fails):
        ctx.fan_out(t.fan_child, items("ff"), policy=FAIL_FAST)  # returns: the body goes on
    children = UserTaskStatus.objects.filter(parent=row)
    assert children.count() == 250
    assert children.filter(state=State.FAILED).count() == 1
    assert children.filter(state=State.CANCELED).count() == 249  # those of chunk 2 too
    row.refresh_from_db()
    assert (row.children_total, row.children_failed, row.children_canceled) == (N, 1, N - 1)
    assert row.completed_steps == N
    assert row.state == State.IN_PROGRESS  # it ends when its body returns (worker WAITING)


def test_a_second_call_after_a_resumed_first_counts_both(user, redis):
    """Calls are recorded one by one: the retry of a body that fans out twice skips the first
    call's children and writes the second call's."""
    row, ctx = parent_ctx(user)
    ctx.fan_out(t.fan_child, [{"i": i, "label": "a"} for i in range(30)])
    with pytest.raises(OperationalError), on_chunk(redis, lambda k: (_ for _ in ()).throw(OperationalError("gone"))):
        ctx.fan_out(t.fan_child, [{"i": i, "label": "b"} for i in range(20)])
    _, retry = parent_ctx(user, attempt=2, row=row)
    retry.fan_out(t.fan_child, [{"i": i, "label": "a"} for i in range(30)])
    retry.fan_out(t.fan_child, [{"i": i, "label": "b"} for i in range(20)])
    row.refresh_from_db()
    assert row.children_total == 50 and row.options["fanout"]["calls"] == [30, 20]
    assert row.options["fanout"]["closed"] == 2
    assert UserTaskStatus.objects.filter(parent=row).count() == 50
    assert redis.llen(QUEUE) == 50
