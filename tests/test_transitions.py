"""State guards: late or duplicate hooks never regress a final state, never lose a cancel, and
of two racing changes exactly one wins.  Drives the status writer directly."""

import threading
import time

import pytest
from django.forms.models import model_to_dict
from django.utils import timezone

from usertasks import TaskContext
from usertasks.models import EventKind, UserTaskStatus
from usertasks.states import FINAL_STATES, State
from usertasks import transitions
from usertasks.writer import Writer, get_writer, stop_writer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def writer():
    yield get_writer()
    stop_writer()


_n = [0]


def make_row(user, **fields):
    _n[0] += 1
    return UserTaskStatus.objects.create(
        user=user, task_id=f"guard-{_n[0]}-{time.monotonic_ns()}", task_class="t", name="guarded", **fields
    )


def make_ctx(row, attempt=1):
    return TaskContext(status_id=row.pk, message_id=row.task_id, actor_name="t", attempt=attempt)


def start(writer, ctx):
    return writer.submit(transitions.start(ctx)).wait(30)


def end(writer, ctx, state, **extra):
    kind = {State.SUCCEEDED: EventKind.SUCCEEDED, State.FAILED: EventKind.FAILED,
            State.CANCELED: EventKind.CANCELED, State.RETRYING: EventKind.RETRYING}[state]
    return writer.submit(transitions.end(ctx, state, kind, fields=extra)).wait(30)


def snapshot(row):
    fresh = UserTaskStatus.objects.get(pk=row.pk)
    values = model_to_dict(fresh)
    values.update(modified=fresh.modified, created=fresh.created)
    return values, list(fresh.events.values_list("kind", flat=True))


@pytest.mark.parametrize("final", FINAL_STATES)
def test_late_start_or_end_cannot_move_a_final_row(user, writer, final):
    done = timezone.now()
    row = make_row(user, state=final, finished=done, completed_steps=3, total_steps=3, worker="w:old",
                   error="kept" if final == State.FAILED else "")
    before = snapshot(row)

    late = make_ctx(row, attempt=2)
    late.step(99)
    assert start(writer, late) is False
    assert late.abort_requested  # the late run is told to stop
    for state in (State.SUCCEEDED, State.FAILED, State.RETRYING, State.CANCELED):
        assert end(writer, late, state, error="late") is False

    # Even a hook that carries the token of the run that finished the row changes nothing.
    same = make_ctx(row)
    same.worker = "w:old"
    for state in (State.SUCCEEDED, State.FAILED, State.RETRYING):
        assert end(writer, same, state, error="duplicate") is False
    writer.flush()
    assert snapshot(row) == before


def test_duplicate_end_is_a_no_op(user, writer):
    row = make_row(user)
    ctx = make_ctx(row)
    assert start(writer, ctx) is True
    ctx.step(5)
    assert end(writer, ctx, State.SUCCEEDED) is True
    after_first = snapshot(row)
    assert after_first[0]["state"] == State.SUCCEEDED and after_first[0]["completed_steps"] == 5
    assert after_first[1] == [EventKind.STARTED, EventKind.SUCCEEDED]

    ctx.step(100)
    assert end(writer, ctx, State.FAILED, error="again") is False
    assert end(writer, ctx, State.SUCCEEDED) is False
    assert start(writer, ctx) is False
    writer.flush()
    assert snapshot(row) == after_first


def test_progress_of_a_finished_run_is_not_written(user, writer):
    row = make_row(user)
    ctx = make_ctx(row)
    writer.register(ctx)
    try:
        assert start(writer, ctx)
        ctx.step(2)
        writer.flush()
        assert UserTaskStatus.objects.get(pk=row.pk).completed_steps == 2
        UserTaskStatus.objects.filter(pk=row.pk).update(state=State.FAILED, finished=timezone.now())
        ctx.step(40, message="late progress")
        writer.flush()
        fresh = UserTaskStatus.objects.get(pk=row.pk)
        assert (fresh.state, fresh.completed_steps, fresh.message) == (State.FAILED, 2, "")
    finally:
        writer.unregister(ctx)


def test_never_loses_a_cancel(user, writer):
    # Canceled while pending: the start that comes later does not revive it.
    pending = make_row(user)
    UserTaskStatus.objects.filter(pk=pending.pk).update(state=State.CANCELED, finished=timezone.now())
    ctx = make_ctx(pending)
    assert start(writer, ctx) is False and ctx.abort_requested
    assert end(writer, ctx, State.SUCCEEDED) is False
    assert UserTaskStatus.objects.get(pk=pending.pk).state == State.CANCELED

    # Canceled while running: neither the run's success, its failure nor a retry moves it.
    running = make_row(user)
    ctx = make_ctx(running)
    assert start(writer, ctx)
    UserTaskStatus.objects.filter(pk=running.pk).update(state=State.CANCELED, finished=timezone.now())
    before = snapshot(running)
    assert end(writer, ctx, State.SUCCEEDED) is False
    assert end(writer, ctx, State.RETRYING, error="x") is False
    assert end(writer, ctx, State.FAILED, error="x") is False
    retry = make_ctx(running, attempt=2)
    assert start(writer, retry) is False
    writer.flush()
    assert snapshot(running) == before


def test_missing_row(user, writer, caplog):
    ctx = TaskContext(status_id=10**12, message_id="gone", actor_name="t")
    assert start(writer, ctx) is False
    assert ctx.row_gone
    assert not ctx.abort_requested  # a missing row does not stop the body
    assert "missing" in caplog.text
    assert end(writer, ctx, State.SUCCEEDED) is False


def test_guarded_update_only_touches_active_rows(user, writer):
    active = make_row(user)
    final = make_row(user, state=State.SUCCEEDED, finished=timezone.now())
    for row in (active, final):
        writer.submit(transitions.expire_before_start(row.pk)).wait(30)
    assert UserTaskStatus.objects.get(pk=active.pk).state == State.FAILED
    assert UserTaskStatus.objects.get(pk=final.pk).state == State.SUCCEEDED


def test_two_racing_ends_exactly_one_wins(user):
    """Two writers (two threads, two database connections) end the same runs at the same time."""
    a, b = Writer(), Writer()
    try:
        rows = [make_row(user) for _ in range(12)]
        ctxs = [make_ctx(row) for row in rows]
        for ctx in ctxs:
            assert start(a, ctx)
        results = {}

        def race(name, writer, state):
            barrier.wait()
            results[name] = [end(writer, ctx, state, error=name) for ctx in ctxs]

        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=race, args=("a", a, State.SUCCEEDED)),
            threading.Thread(target=race, args=("b", b, State.FAILED)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for i, row in enumerate(rows):
            won_a, won_b = results["a"][i], results["b"][i]
            assert won_a != won_b, f"row {i}: exactly one end must win"
            fresh = UserTaskStatus.objects.get(pk=row.pk)
            assert fresh.state == (State.SUCCEEDED if won_a else State.FAILED)
            finals = fresh.events.exclude(kind=EventKind.STARTED).values_list("kind", flat=True)
            assert list(finals) == [EventKind.SUCCEEDED if won_a else EventKind.FAILED]
    finally:
        a.stop()
        b.stop()


def test_duplicate_delivery_only_the_latest_run_ends_the_task(user, writer):
    row = make_row(user)
    first, second = make_ctx(row), make_ctx(row, attempt=1)
    assert start(writer, first)
    assert start(writer, second)  # redelivered while the first run still holds the row
    assert UserTaskStatus.objects.get(pk=row.pk).worker == second.worker
    assert end(writer, first, State.FAILED, error="stale run") is False
    assert end(writer, second, State.SUCCEEDED) is True
    fresh = UserTaskStatus.objects.get(pk=row.pk)
    assert (fresh.state, fresh.error) == (State.SUCCEEDED, "")


def test_many_updates_of_one_shape_in_one_statement(user):
    """The writer's multi-row UPDATE: each row is guarded on its own, and results say which
    rows changed."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from usertasks.sql import Statements as _Statements

    rows = [
        UserTaskStatus.objects.create(user=user, task_id=f"many-{i}", task_class="x", name=f"n{i}",
                                      state=State.IN_PROGRESS, worker=f"w{i}")
        for i in range(5)
    ]
    now = timezone.now()
    plans = []
    for i, row in enumerate(rows):
        worker = "someone-else" if i == 2 else f"w{i}"  # this guard must fail
        plans.append((
            {"state": State.SUCCEEDED, "completed_steps": i, "finished": now, "unique_key": None},
            {"pk": row.pk, "state": State.IN_PROGRESS, "worker": worker},
        ))
    sql = _Statements.get(connection)
    with CaptureQueriesContext(connection) as queries:
        results = sql.update_many(plans)
    assert results == [True, True, False, True, True]
    if sql.multi_row:
        assert len(queries) == 1
    for i, row in enumerate(rows):
        row.refresh_from_db()
        if i == 2:
            assert row.state == State.IN_PROGRESS and row.finished is None
        else:
            assert row.state == State.SUCCEEDED and row.completed_steps == i and row.finished is not None


def lazy_end(writer, ctx):
    return writer.submit(transitions.end(ctx, State.SUCCEEDED, EventKind.SUCCEEDED, lazy=True))


def test_lazy_ends_wait_for_company_and_an_eager_change_takes_them_along(user, writer, settings):
    """WRITE_LINGER: ends no thread waits for are held, and the first change someone waits for
    commits them with it, in one transaction."""
    settings.USERTASKS = dict(settings.USERTASKS, WRITE_LINGER=5.0)
    rows = [make_row(user) for _ in range(5)]
    ctxs = [make_ctx(row) for row in rows]
    for ctx in ctxs:
        assert start(writer, ctx)
    batches = writer.batches
    ops = [lazy_end(writer, ctx) for ctx in ctxs[:4]]
    time.sleep(0.3)
    assert not any(op.done.is_set() for op in ops)
    assert UserTaskStatus.objects.filter(pk__in=[r.pk for r in rows], state=State.IN_PROGRESS).count() == 5
    assert end(writer, ctxs[4], State.SUCCEEDED) is True  # waited for: written at once, with the others
    assert all(op.done.wait(5) and op.applied for op in ops)
    assert writer.batches == batches + 1
    assert UserTaskStatus.objects.filter(pk__in=[r.pk for r in rows], state=State.SUCCEEDED).count() == 5


@pytest.mark.parametrize("linger", [0.3, 0])
def test_lazy_ends_alone_are_written_after_the_linger(user, writer, settings, linger):
    settings.USERTASKS = dict(settings.USERTASKS, WRITE_LINGER=linger)
    ctxs = [make_ctx(make_row(user)) for _ in range(3)]
    for ctx in ctxs:
        assert start(writer, ctx)
    t0 = time.monotonic()
    ops = [lazy_end(writer, ctx) for ctx in ctxs]
    assert all(op.done.wait(10) and op.applied for op in ops)
    elapsed = time.monotonic() - t0
    if linger:
        assert elapsed >= linger * 0.9
    assert UserTaskStatus.objects.filter(pk__in=[c.status_id for c in ctxs], state=State.SUCCEEDED).count() == 3
