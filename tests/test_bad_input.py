"""Bad input on the hot path never loses a final state: what the database could not store is
refused where it enters (a clear error in the task) or clipped, and a final write the database
still refuses ends the task Failed with the reason.  Real worker, real database."""

import pytest
from django.db import connection
from django.test import override_settings

from usertasks.context import TaskContext
from usertasks.models import EventKind
from usertasks.states import State

from . import tasks_stall as t
from .helpers import wait_final

pytestmark = pytest.mark.django_db(transaction=True)

REJECTED = {
    "negative-step": ("ValueError", "step(n): n must be >= 0, got -7 (progress only moves forward)", 5),
    "huge-total": ("ValueError", "set_total_steps(n): n must be at most 9223372036854775807", 0),
    "negative-total": ("ValueError", "set_total_steps(n): n must be >= 0, got -1", 0),
    "past-the-largest-count": ("ValueError", "the count of steps done would pass 9223372036854775807", 2**63 - 1),
    "fractional-step": ("TypeError", "step(n): n must be a whole number of steps, got 1.5", 0),
}


def test_bad_values_are_refused_in_the_task_and_the_task_ends_failed(worker, user):
    sent = {case: t.bad_input.send_for(user, case=case) for case in REJECTED}
    for case, (error_class, text, completed) in REJECTED.items():
        status = wait_final(sent[case])
        assert status.state == State.FAILED, (case, status.state, status.error)
        assert status.error_class.endswith(error_class), (case, status.error_class)
        assert text in status.error, (case, status.error)
        assert status.completed_steps == completed, case
        assert status.started is not None  # never "never started"
        kinds = list(status.events.values_list("kind", flat=True))
        assert kinds[-1] == EventKind.FAILED and EventKind.NEVER_STARTED not in kinds, (case, kinds)


def test_messages_and_errors_are_made_storable(worker, user):
    big = t.bad_input.send_for(user, case="oversized-message")
    odd = t.bad_input.send_for(user, case="unstorable-message")
    err = t.bad_input.send_for(user, case="unstorable-error")
    big, odd, err = wait_final(big), wait_final(odd), wait_final(err)
    assert big.state == State.SUCCEEDED and big.completed_steps == 2
    assert big.message == "é" * 499 + "\u2026"  # MESSAGE_MAX_LENGTH (500), cut with an ellipsis
    assert odd.state == State.SUCCEEDED
    assert odd.message == "nul\ufffd and lone \ufffd surrogate"
    assert err.state == State.FAILED
    assert err.error == "nul\ufffd in the error, and a lone \ufffd surrogate"
    assert "\x00" not in err.traceback
    assert err.events.filter(kind=EventKind.FAILED, detail=err.error).exists()


@pytest.fixture
def refusing_database():
    """The database refuses to store any row whose error mentions "refuse-me" (a constraint the
    writer cannot foresee)."""
    table = "usertasks_usertaskstatus"
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                f"CREATE TRIGGER test_refuse BEFORE UPDATE ON {table} WHEN NEW.error LIKE '%refuse-me%' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END"
            )
        else:
            cursor.execute(
                f"ALTER TABLE {table} ADD CONSTRAINT test_refuse CHECK (error NOT LIKE '%%refuse-me%%')"
                + (" NOT VALID" if connection.vendor == "postgresql" else "")
            )
    yield
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("DROP TRIGGER test_refuse")
        elif connection.vendor == "mysql":
            cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT test_refuse")
        else:
            cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT test_refuse")


def test_a_final_write_the_database_refuses_ends_the_task_failed(refusing_database, start_worker, user, capfd):
    start_worker()
    status = wait_final(t.bad_input.send_for(user, case="refused-end"))
    assert status.state == State.FAILED
    assert status.error.startswith("The database refused to store this task's outcome (Failed): ")
    assert "refuse-me" not in status.error  # the reason, not the row the database quoted
    assert status.completed_steps == 3 and status.finished is not None and status.started is not None
    kinds = list(status.events.values_list("kind", flat=True))
    assert kinds[-1] == EventKind.FAILED and EventKind.NEVER_STARTED not in kinds
    assert status.events.get(kind=EventKind.FAILED).detail == status.error
    assert "the database refused the end of task" in capfd.readouterr().err


def test_step_and_set_total_steps_validate_in_memory():
    ctx = TaskContext(status_id=1, message_id="m", actor_name="a")
    ctx.step(5)
    with pytest.raises(ValueError, match="must be >= 0, got -7"):
        ctx.step(-7)
    with pytest.raises(TypeError, match="whole number"):
        ctx.step("x")
    with pytest.raises(ValueError, match="at most 9223372036854775807"):
        ctx.set_total_steps(2**63)
    assert ctx.completed == 5 and ctx.total is None  # nothing refused was kept
    ctx.step(2.0)
    ctx.step(True)
    assert ctx.completed == 8
    ctx.completed, ctx.total = -3, 2**64  # set by hand: stored as what the columns hold
    assert ctx.snapshot()[:2] == (0, 2**63 - 1)


def test_message_limit_is_the_column_length_at_most():
    ctx = TaskContext(status_id=1, message_id="m", actor_name="a")
    ctx.set_message("y" * 5000)
    with override_settings(USERTASKS={"MESSAGE_MAX_LENGTH": 4000}):
        assert len(ctx.snapshot()[2]) == 1000  # the column holds 1000 characters
    with override_settings(USERTASKS={"MESSAGE_MAX_LENGTH": 10}):
        assert ctx.snapshot()[2] == "y" * 9 + "\u2026"
