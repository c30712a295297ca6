"""usertasks.sql.execute: server-side prepared statements on PostgreSQL (psycopg 3), and the way
back to client-side binding when the server refuses them (a transaction-mode pooler)."""

import logging

import pytest
from django.db import OperationalError, connection, transaction

from usertasks import sql as bulk

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL only")

SQL = "SELECT x * 2 FROM unnest(%s::bigint[]) AS x"


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.setattr(bulk, "_prepare_failed", False)
    yield


def prepared_here():
    """Statements this session has prepared that contain SQL (read on the same connection)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                       ["%x * 2 FROM unnest%"])
        return cursor.fetchone()[0]


def native():
    """Whether the connection is psycopg 3 (psycopg2 has no server-side binding)."""
    connection.ensure_connection()
    return hasattr(connection.connection, "prepare_threshold")


@pytest.mark.django_db
def test_statement_is_prepared_once_and_reused():
    if not native():
        pytest.skip("psycopg 3 only")
    assert bulk.execute(connection, SQL, [[1, 2, 3]]) == [(2,), (4,), (6,)]
    assert bulk.execute(connection, SQL, [[5]]) == [(10,)]
    assert prepared_here() == 1
    # Django's own preparation setting of the connection is left as it was.
    assert connection.connection.prepare_threshold is None


@pytest.mark.django_db
def test_setting_or_options_turn_preparation_off(settings):
    settings.USERTASKS = {"PREPARED_STATEMENTS": False}
    assert bulk.execute(connection, SQL, [[1]]) == [(2,)]
    assert prepared_here() == 0
    settings.USERTASKS = {}
    options = connection.settings_dict.setdefault("OPTIONS", {})
    options["prepare_threshold"] = None
    try:
        assert bulk.execute(connection, SQL, [[1]]) == [(2,)]
        assert prepared_here() == 0
    finally:
        del options["prepare_threshold"]


@pytest.mark.django_db
def test_queries_stay_visible_to_capture_queries():
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        bulk.execute(connection, SQL, [[1]])
    assert len(ctx.captured_queries) == 1 and "unnest" in ctx.captured_queries[0]["sql"]


@pytest.mark.django_db(transaction=True)
def test_lost_statement_outside_a_transaction_falls_back_at_once(caplog):
    """A pooler hands the next Bind to a server connection that never saw the Parse: the server
    says the statement does not exist.  Simulated by deallocating it behind psycopg's back."""
    if not native():
        pytest.skip("psycopg 3 only")
    bulk.execute(connection, SQL, [[1]])
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    with caplog.at_level(logging.WARNING, logger="usertasks.db"):
        assert bulk.execute(connection, SQL, [[21]]) == [(42,)]
    assert bulk._prepare_failed
    assert "PREPARED_STATEMENTS" in caplog.text
    assert bulk.execute(connection, SQL, [[4]]) == [(8,)] and prepared_here() == 0


@pytest.mark.django_db(transaction=True)
def test_lost_statement_inside_a_transaction_asks_for_a_retry():
    if not native():
        pytest.skip("psycopg 3 only")
    bulk.execute(connection, SQL, [[1]])
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    with pytest.raises(OperationalError, match="retrying without"):
        with transaction.atomic():
            bulk.execute(connection, SQL, [[1]])
    # The writer's retry (a transient OperationalError) then runs it unprepared.
    from usertasks.writer import _transient

    assert _transient(OperationalError("usertasks: prepared statement refused; retrying without"))
    with transaction.atomic():
        assert bulk.execute(connection, SQL, [[3]]) == [(6,)]
