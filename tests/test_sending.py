"""send_for / send_many_for: rows in the caller's transaction, messages on commit."""

import datetime
import json
import logging

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from usertasks import ArgumentsNotSerializable, EnqueueError, UserTasksError, user_task
from usertasks.protocol import STATUS_OPTION
from usertasks.models import EventKind, UserTaskEvent, UserTaskStatus
from usertasks.states import State

from . import tasks, tasks_core
from .helpers import wait_final, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "dramatiq:default"


@pytest.fixture
def clean_redis(redis):
    redis.flushdb()
    yield redis
    redis.flushdb()


def queued(redis, queue=QUEUE):
    """Messages waiting on a queue of the Redis broker."""
    return [json.loads(v) for v in redis.hvals(f"{queue}.msgs")]


def test_row_in_callers_transaction_message_on_commit(user, clean_redis):
    with transaction.atomic():
        status = tasks.noop.send_for(user, label="commit")
        assert UserTaskStatus.objects.filter(pk=status.pk, state=State.PENDING).exists()
        assert queued(clean_redis) == []  # not yet: the transaction may still roll back
    messages = queued(clean_redis)
    assert len(messages) == 1
    assert messages[0]["message_id"] == status.task_id
    assert messages[0]["options"][STATUS_OPTION] == status.pk
    assert messages[0]["kwargs"] == {"label": "commit"}
    assert list(status.events.values_list("kind", flat=True)) == [EventKind.ENQUEUED]


def test_rollback_enqueues_nothing_and_leaves_no_row(user, clean_redis):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with transaction.atomic():
            tasks.noop.send_for(user, label="rollback")
            tasks.noop.send_many_for(user, [{"label": "r1"}, {"label": "r2"}])
            raise Boom()
    assert not UserTaskStatus.objects.exists()
    assert not UserTaskEvent.objects.exists()
    assert queued(clean_redis) == []
    assert clean_redis.llen(QUEUE) == 0


def test_rollback_of_a_savepoint_only(user, clean_redis):
    with transaction.atomic():
        kept = tasks.noop.send_for(user, label="kept")
        try:
            with transaction.atomic():
                tasks.noop.send_for(user, label="dropped")
                raise RuntimeError
        except RuntimeError:
            pass
    assert list(UserTaskStatus.objects.values_list("pk", flat=True)) == [kept.pk]
    assert [m["message_id"] for m in queued(clean_redis)] == [kept.task_id]


def test_name_is_formatted_over_the_arguments(user, clean_redis):
    assert tasks_core.named.send_for(user, "c1").name == "Report c1 (csv, en)"
    assert tasks_core.named.send_for(user, "c2", "pdf").name == "Report c2 (pdf, en)"
    assert tasks_core.named.send_for(user, course="c3", lang="fr").name == "Report c3 (csv, fr)"
    assert tasks_core.named.send_for(user, "c4", fmt="xml", lang="de").name == "Report c4 (xml, de)"
    assert tasks_core.indexed.send_for(user, 3, 7).name == "Item 3 of 7"
    assert tasks_core.indexed.send_for(user, 4, b=8).name == "Item 4 of 8"
    assert tasks_core.indexed.send_for(user, b=9, a=5).name == "Item 5 of 9"
    assert tasks_core.varargs.send_for(user, "x", "y", "z", extra="!").name == "x/y/z !"
    assert tasks.count.send_for(user, 12).name == "Count to 12"
    long = tasks.noop.send_for(user, label="x" * 400)
    assert len(long.name) == 255 and long.name.endswith("\u2026")
    assert UserTaskStatus.objects.count() == 10


def test_bad_name_template_or_arguments_write_nothing(user, clean_redis):
    with pytest.raises(ValueError, match="cannot format task name"):
        tasks_core.bad_name.send_for(user)
    with pytest.raises(TypeError, match="named"):
        tasks_core.named.send_for(user)  # missing required argument
    with pytest.raises(TypeError):
        tasks_core.named.send_for(user, "c", nope=1)
    assert not UserTaskStatus.objects.exists()
    assert queued(clean_redis) == []


def test_arguments_bind_as_the_signature_binds_them():
    """The fast binder agrees with ``inspect.Signature.bind`` + ``apply_defaults`` on every call
    it takes, and leaves the others (errors included) to it."""
    actor = tasks_core.named  # (course, fmt="csv", *, lang="en")
    assert actor._binder is not None and tasks_core.varargs._binder is None
    calls = [
        (("c",), {}), (("c", "pdf"), {}), ((), {"course": "c"}), (("c",), {"lang": "fr"}),
        ((), {"lang": "fr", "course": "c", "fmt": "x"}), (("c", "pdf"), {"lang": "de"}),
    ]
    for args, kwargs in calls:
        bound = actor._user_signature.bind(*args, **kwargs)
        bound.apply_defaults()
        fast = actor._binder(args, kwargs)
        assert fast == dict(bound.arguments) and list(fast) == list(bound.arguments)
    for args, kwargs in [((), {}), (("c", "pdf", "fr"), {}), (("c",), {"course": "d"}), (("c",), {"nope": 1})]:
        assert actor._binder(args, kwargs) is None
        with pytest.raises(TypeError, match="named: "):
            actor.bind_arguments(args, kwargs)


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", datetime.date(2024, 1, 1)])
def test_unserialisable_arguments_raise_before_any_write(user, clean_redis, value):
    with pytest.raises(ArgumentsNotSerializable) as info:
        tasks.noop.send_for(user, label=value)
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, UserTasksError)
    assert "noop" in str(info.value)
    assert not UserTaskStatus.objects.exists()
    assert queued(clean_redis) == []


def test_unserialisable_argument_in_a_bulk_send_writes_nothing(user, clean_redis):
    with pytest.raises(ArgumentsNotSerializable, match="noop.*not JSON serializable"):
        tasks.noop.send_many_for(user, [{"label": "ok"}] * 5 + [{"label": object()}] + [{"label": "ok"}] * 5)
    assert not UserTaskStatus.objects.exists()
    assert queued(clean_redis) == []


def test_user_must_be_saved_and_authenticated(user, django_user_model, clean_redis):
    for who in (None, AnonymousUser(), django_user_model(username="unsaved")):
        with pytest.raises(ValueError, match="saved, authenticated user"):
            tasks.noop.send_for(who, label="x")
    assert not UserTaskStatus.objects.exists()
    assert queued(clean_redis) == []


def test_plain_send_runs_untracked_and_warns_once_per_actor(worker, user, redis, caplog):
    caplog.set_level(logging.WARNING, logger="usertasks")
    tasks_core.untracked_a.send(label="1")
    tasks_core.untracked_a.send(label="2")
    tasks_core.untracked_b.send(label="1")
    tasks_core.untracked_b.send_with_options(kwargs={"label": "2"})
    warnings = [r for r in caplog.records if "runs untracked" in r.getMessage()]
    assert [r.getMessage().split()[0] for r in warnings] == ["untracked_a", "untracked_b"]
    assert all(r.levelno == logging.WARNING for r in warnings)
    for key in ("untracked_a:1", "untracked_a:2", "untracked_b:1", "untracked_b:2"):
        wait_for(lambda: redis.get(f"side-effect:{key}") == b"1", 30, message=key)
    assert redis.get("side-effect:untracked_a_ctx:False") == b"2"
    assert not UserTaskStatus.objects.exists()
    # A tracked send does not warn.
    caplog.clear()
    wait_final(tasks_core.untracked_a.send_for(user, label="3"))
    assert not [r for r in caplog.records if "runs untracked" in r.getMessage()]


def test_send_many_for_bulk(worker, user, redis):
    calls = [(i,) if i % 2 else {"n": i, "label": f"k{i}"} for i in range(1, 21)]
    with CaptureQueriesContext(connection) as ctx:
        rows = tasks.count.send_many_for(user, calls)
    inserts = [q["sql"] for q in ctx.captured_queries if q["sql"].lstrip().upper().startswith("INSERT")]
    assert len(inserts) == 2  # one for the rows, one for their "enqueued" events
    assert len(rows) == 20 and all(r.pk for r in rows)
    assert [r.name for r in rows] == [f"Count to {i}" for i in range(1, 21)]
    assert len({r.task_id for r in rows}) == 20
    assert UserTaskEvent.objects.filter(kind=EventKind.ENQUEUED).count() == 20
    for row in rows:
        wait_final(row)
        assert row.state == State.SUCCEEDED
    assert [r.completed_steps for r in rows] == list(range(1, 21))


def test_send_many_for_empty(user, clean_redis):
    assert tasks.noop.send_many_for(user, []) == []
    assert not UserTaskStatus.objects.exists()


def test_total_steps_option(worker, user):
    fixed = tasks_core.fixed_total.send_for(user)
    computed = tasks_core.callable_total.send_for(user, 4)
    assert (fixed.total_steps, computed.total_steps) == (10, 8)
    assert UserTaskStatus.objects.get(pk=fixed.pk).total_steps == 10
    wait_final(fixed)
    wait_final(computed)
    assert (fixed.state, fixed.completed_steps, fixed.total_steps) == (State.SUCCEEDED, 3, 10)
    assert (computed.completed_steps, computed.total_steps) == (4, 8)
    assert fixed.percent == 100.0


def test_delay_sets_eta_and_uses_the_delay_queue(user, clean_redis):
    status = tasks.noop.send_for_with_options(user, kwargs={"label": "later"}, delay=60_000)
    assert status.eta is not None and status.eta > status.created
    assert queued(clean_redis) == []
    assert [m["message_id"] for m in queued(clean_redis, QUEUE + ".DQ")] == [status.task_id]
    assert status.events.get().detail.startswith("due ")


@pytest.fixture
def dead_broker():
    """usertasks' RedisBroker on a private Redis, and a user task declared on it."""
    from usertasks.devredis import RedisServer
    from usertasks.middleware import install as install_middleware
    from usertasks.redis import RedisBroker

    server = RedisServer().start()
    broker = RedisBroker(url=server.url)
    install_middleware(broker)

    @user_task(broker=broker, actor_name="usertasks_tests_down_noop", name="Down {label}")
    def down_noop(task, label=""):
        pass

    yield server, broker, down_noop
    server.stop()
    broker.close()


def test_broker_down_at_enqueue_fails_the_rows(user, dead_broker):
    server, broker, actor = dead_broker
    ok = actor.send_for(user, label="up")  # the broker works
    assert ok.state == State.PENDING
    server.stop()
    with pytest.raises(EnqueueError) as info:
        actor.send_for(user, label="down")
    assert isinstance(info.value, UserTasksError)
    assert "usertasks_tests_down_noop" in str(info.value)
    row = UserTaskStatus.objects.get(name="Down down")
    assert row.state == State.FAILED
    assert row.error.startswith("The task could not be queued")
    assert row.error_class
    assert row.finished is not None
    assert list(row.events.values_list("kind", flat=True)) == [EventKind.ENQUEUED, EventKind.FAILED]

    with pytest.raises(EnqueueError):
        with transaction.atomic():
            actor.send_many_for(user, [{"label": "m1"}, {"label": "m2"}, {"label": "m3"}])
    bulk = UserTaskStatus.objects.filter(name__in=["Down m1", "Down m2", "Down m3"])
    assert sorted(bulk.values_list("state", flat=True)) == [State.FAILED] * 3
    assert UserTaskStatus.objects.get(pk=ok.pk).state == State.PENDING  # untouched


def test_notify_given_as_a_set_is_stored_as_a_sorted_list(user):
    status = tasks.notify_set.send_for(user, label="x")
    status.refresh_from_db()
    assert status.options["notify"] == ["Canceled", "Failed"]


class _RefuseLabel:
    """Broker middleware refusing to enqueue the message whose ``label`` argument is given."""

    def __init__(self, label):
        self.label = label
        self.seen = []

    def __getattr__(self, name):
        if name.startswith(("before_", "after_")):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def before_enqueue(self, broker, message, delay):
        from dramatiq.middleware import MiddlewareError

        if message.kwargs.get("label") == self.label:
            raise MiddlewareError(f"refused {self.label}")

    def after_enqueue(self, broker, message, delay):
        self.seen.append(message.kwargs.get("label"))


def test_send_many_for_pipelines_the_messages(user, dead_broker, monkeypatch):
    """The messages of a bulk send go to Redis in chunks, one round trip each: a few round trips,
    the broker's own middleware hooks run for every message, all arrive in order."""
    import redis.connection

    server, broker, actor = dead_broker
    client = broker.client
    client.ping()
    monkeypatch.setattr(broker, "chunk_size", 40)
    hooks = _RefuseLabel(label=None)
    broker.middleware.append(hooks)
    trips = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        trips[0] += 1
        return original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    rows = actor.send_many_for(user, [{"label": f"p{i}"} for i in range(100)])
    monkeypatch.undo()
    # 3 chunks (the first loading the script), and the broker's first-use calls: about 10,
    # against 100 one message at a time
    assert trips[0] <= 15
    assert hooks.seen == [f"p{i}" for i in range(100)]
    queued_ids = [json.loads(m)["options"][STATUS_OPTION] for m in client.hvals("dramatiq:default.msgs")]
    assert sorted(queued_ids) == sorted(r.pk for r in rows)
    assert client.llen("dramatiq:default") == 100
    assert [json.loads(client.hget("dramatiq:default.msgs", mid))["kwargs"]["label"]
            for mid in client.lrange("dramatiq:default", 0, -1)] == [f"p{i}" for i in range(100)]


def test_a_failed_pipeline_fails_its_tasks_and_the_later_ones_only(user, dead_broker, monkeypatch):
    server, broker, actor = dead_broker
    monkeypatch.setattr(broker, "chunk_size", 4)
    broker.middleware.append(_RefuseLabel(label="f5"))
    with pytest.raises(EnqueueError, match="refused f5"):
        actor.send_many_for(user, [{"label": f"f{i}"} for i in range(10)])
    states = dict(UserTaskStatus.objects.values_list("name", "state"))
    # The first chunk (f0-f3) went out; the second failed before it was sent, so nothing of it did.
    assert [states[f"Down f{i}"] for i in range(10)] == [State.PENDING] * 4 + [State.FAILED] * 6
    assert broker.client.hlen("dramatiq:default.msgs") == 4


def test_bulk_insert_prepares_values_like_the_orm(user):
    """usertasks.sql.insert stores exactly what bulk_create would, shared values included."""
    from django.utils import timezone

    from usertasks import sql as bulk
    from usertasks.sending import _event, prepare
    from usertasks.sending import new_row as _row

    now = timezone.now()
    prepared = [prepare(tasks_core.fixed_total, user, (), {}) for _ in range(3)]
    prepared[1].row_options = {"notify": ["Failed"]}
    prepared[2].delay = 5000
    rows = bulk.insert([_row(p, now) for p in prepared], connection.alias)
    assert all(r.pk and not r._state.adding for r in rows)
    stored = list(UserTaskStatus.objects.order_by("pk"))
    assert [s.pk for s in stored] == [r.pk for r in rows]
    assert [s.uuid for s in stored] == [r.uuid for r in rows] and len({s.uuid for s in stored}) == 3
    assert [s.options for s in stored] == [{}, {"notify": ["Failed"]}, {}]
    assert [s.eta is None for s in stored] == [True, True, False]
    assert all(s.created == now and s.total_steps == 10 and s.state == State.PENDING for s in stored)
    events = bulk.insert([_event(r, now) for r in rows], connection.alias)
    assert list(UserTaskEvent.objects.order_by("pk").values_list("status_id", "kind")) == [
        (r.pk, EventKind.ENQUEUED) for r in rows]
    assert all(e.pk for e in events)


def test_rows_copied_from_the_first_are_the_rows_the_model_builds(user, django_assert_num_queries):
    """sending.new_rows copies the first row for calls sharing its user and parent; what is
    stored is what one model instance per call would store, and each row has its own uuid."""
    from django.utils import timezone

    from usertasks import sql as bulk
    from usertasks.sending import new_row as _row
    from usertasks.sending import new_rows as _rows
    from usertasks.sending import prepare_many

    now = timezone.now()
    parent = tasks_core.fixed_total.send_for(user)
    calls = [((), {})] * 4
    prepared = prepare_many(tasks_core.fixed_total, user, calls, parent=parent)
    prepared[1].row_options = {"notify": ["Failed"]}
    prepared[2].delay = 5000
    prepared[3].parent = None  # not the first's parent: built by the model
    copied = _rows(prepared, now)
    built = [_row(p, now) for p in prepared]
    skip = {"_state", "uuid"}
    for c, b in zip(copied, built):
        assert {k: v for k, v in vars(c).items() if k not in skip} == {k: v for k, v in vars(b).items() if k not in skip}
        assert c._state is not copied[0]._state or c is copied[0]
    assert len({r.uuid for r in copied}) == 4 and all(r.uuid.version == 4 for r in copied)
    with django_assert_num_queries(0):
        assert all(r.user is user for r in copied)
        assert [r.parent for r in copied] == [parent, parent, parent, None]
    bulk.insert(copied, connection.alias)
    stored = list(UserTaskStatus.objects.exclude(pk=parent.pk).order_by("pk"))
    assert [s.uuid for s in stored] == [r.uuid for r in copied]
    assert [s.parent_id for s in stored] == [parent.pk, parent.pk, parent.pk, None]
    assert [s.options for s in stored] == [{}, {"notify": ["Failed"]}, {}, {}]
    assert [s.eta is None for s in stored] == [True, True, False, True]
    if bulk.supported(connection):  # elsewhere Django's bulk_create stamps each row
        assert len({s.modified for s in stored}) == 1  # auto_now: one time for the batch


def test_prepare_many_draws_distinct_message_ids(user):
    import uuid

    from usertasks.ids import random_uuids
    from usertasks.sending import prepare_many

    ids = random_uuids(1000)
    assert len(set(ids)) == 1000 and {u.version for u in ids} == {4}
    prepared = prepare_many(tasks.count, user, [((i,), {}) for i in range(50)], options={"max_retries": 1})
    message_ids = [p.message.message_id for p in prepared]
    assert len(set(message_ids)) == 50 and all(uuid.UUID(m).version == 4 for m in message_ids)
    assert [p.message.args for p in prepared] == [(i,) for i in range(50)]
    assert all(p.message.options == {"max_retries": 1} and p.message.kwargs == {} for p in prepared)
    assert all(p.message.queue_name == tasks.count.queue_name for p in prepared)


def test_send_for_writes_once(user, clean_redis):
    """send_for: the row and its "enqueued" event; on PostgreSQL one statement, which outside a
    transaction is its own (no BEGIN/COMMIT round trips); elsewhere two INSERTs in one."""
    with CaptureQueriesContext(connection) as ctx:
        status = tasks.noop.send_for(user, label="once")
    sql = [q["sql"].lstrip().upper() for q in ctx.captured_queries]
    writes = [s for s in sql if s.startswith(("INSERT", "UPDATE", "DELETE", "WITH"))]
    if connection.vendor == "postgresql":
        assert len(writes) == 1 and writes[0].startswith("WITH") and not any(s.startswith("BEGIN") for s in sql)
    else:
        assert len(writes) == 2
    row = UserTaskStatus.objects.get(pk=status.pk)
    assert (row.uuid, row.task_id, row.name, row.state) == (status.uuid, status.task_id, "No-op once", State.PENDING)
    assert list(row.events.values_list("kind", flat=True)) == [EventKind.ENQUEUED]
    assert [m["options"][STATUS_OPTION] for m in queued(clean_redis)] == [status.pk]


def test_send_for_in_a_rolled_back_transaction_leaves_nothing(user, clean_redis):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            tasks.noop.send_for(user, label="gone")
            raise RuntimeError("rollback")
    assert not UserTaskStatus.objects.exists() and not UserTaskEvent.objects.exists()
    assert queued(clean_redis) == []


def test_send_many_for_with_a_delay_pipelines_into_the_delay_queue(user, clean_redis):
    rows = tasks.noop.send_many_for(user, [{"label": f"d{i}"} for i in range(5)], delay=60_000)
    assert all(r.eta is not None and r.eta > r.created for r in rows)
    assert queued(clean_redis) == []
    delayed = queued(clean_redis, QUEUE + ".DQ")
    assert sorted(m["options"][STATUS_OPTION] for m in delayed) == sorted(r.pk for r in rows)
    assert all(m["options"]["eta"] > 0 for m in delayed)


def test_bulk_enqueue_stores_what_the_broker_would(dead_broker):
    """enqueue_many's one-script path leaves Redis as Dramatiq's RedisBroker.enqueue does: each
    message in its queue's hash under a Redis id of its own, that id pushed on the queue (the
    delay queue, with an ``eta``, for a delayed message), in order, hooks run per message."""
    from dramatiq import Message
    from dramatiq.brokers.redis import RedisBroker

    from usertasks.broker import enqueue_many
    from usertasks.redis import RedisBroker as FastBroker

    server, broker, actor = dead_broker
    hooks = _RefuseLabel(label=None)
    broker.middleware.append(hooks)
    assert type(broker).enqueue is RedisBroker.enqueue  # the one-script path

    def message(queue, label):
        return Message(queue_name=queue, actor_name=actor.actor_name, args=(), kwargs={"label": label}, options={"k": 1})

    items = [(message("default", "a"), None, {"extra": "x"}), (message("other", "b"), None),
             (message("default", "c"), 60_000), (message("default", "d"), None)]
    assert enqueue_many(broker, items) == 4
    client = broker.client

    def stored(queue):
        return [json.loads(client.hget(f"dramatiq:{queue}.msgs", rid)) | {"_rid": rid.decode()}
                for rid in client.lrange(f"dramatiq:{queue}", 0, -1)]

    default, other, delayed = stored("default"), stored("other"), stored("default.DQ")
    assert [m["kwargs"]["label"] for m in default] == ["a", "d"]
    assert [m["kwargs"]["label"] for m in other] == ["b"] and [m["kwargs"]["label"] for m in delayed] == ["c"]
    for m, (sent, *_) in zip(default + other + delayed, [items[0], items[3], items[1], items[2]]):
        assert m["options"]["redis_message_id"] == m["_rid"]
        assert m["message_id"] == sent.message_id and m["message_timestamp"] == sent.message_timestamp
        assert m["options"]["k"] == 1 and m["actor_name"] == actor.actor_name
    assert default[0]["options"]["extra"] == "x"
    assert delayed[0]["queue_name"] == "default.DQ" and delayed[0]["options"]["eta"] > 0
    assert "eta" not in default[1]["options"]
    assert len({m["_rid"] for m in default + other + delayed}) == 4
    assert hooks.seen == ["a", "b", "c", "d"]
    # The same message through Dramatiq's own enqueue: the same fields.
    own = json.loads(broker.enqueue(message("mine", "e")).encode())
    assert set(own) == set(default[0]) - {"_rid"} and set(own["options"]) == {"k", "redis_message_id"}

    # A subclass overriding enqueue, and Dramatiq's own broker: one enqueue() per message.
    calls = []

    class Custom(FastBroker):
        def enqueue(self, message, *, delay=None):
            calls.append(message.kwargs["label"])
            return super().enqueue(message, delay=delay)

    for cls in (Custom, RedisBroker):
        custom = cls(client=client, namespace="custom")
        if cls is RedisBroker:
            custom.enqueue = lambda message, *, delay=None, _own=custom.enqueue: calls.append(
                message.kwargs["label"]) or _own(message, delay=delay)
        assert enqueue_many(custom, [(message("q", "x"), None), (message("q", "y"), None)]) == 2
        assert client.llen("custom:q") == 2
        client.delete("custom:q", "custom:q.msgs")
    assert calls == ["x", "y", "x", "y"]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="array literals are for PostgreSQL's unnest")
def test_array_literals_give_back_the_values(user):
    """bulk.literal writes the arrays of the bulk statements as text: what PostgreSQL reads back
    is what was written, whatever the characters."""
    import uuid

    from django.utils import timezone

    from usertasks import sql as bulk

    field = UserTaskStatus._meta.get_field
    texts = ['plain', '', 'NULL', None, 'a "quoted" word', 'back\\slash \\" both', '{braces}, commas',
             'new\nline\ttab', 'ünïcødé ✓', "'single'"]
    now = timezone.now()
    cases = [
        (field("name"), "varchar(255)", texts),
        (field("error"), "text", texts),
        (field("completed_steps"), "bigint", [0, 1, 2**62, None]),
        (field("user"), "integer", [1, 2, 3]),
        (field("created"), "timestamptz", [now, None, now.replace(microsecond=0)]),
        (field("is_container"), "boolean", [True, False, None]),
        (field("uuid"), "uuid", [uuid.uuid4(), None]),
    ]
    with connection.cursor() as cursor:
        for f, db_type, values in cases:
            prepared = [None if v is None else f.get_db_prep_save(v, connection) for v in values]
            text = bulk.literal(prepared, f, connection)
            assert isinstance(text, str)
            cursor.execute(f"SELECT unnest(%s::{db_type}[])", [text])
            assert [row[0] for row in cursor.fetchall()] == values, f.name
        options = field("options")
        docs = [{"a": 'x"y\\z', "n": [1, None]}, {}, None]
        text = bulk.literal([None if d is None else options.get_db_prep_save(d, connection) for d in docs], options,
                            connection)
        cursor.execute("SELECT unnest(%s::jsonb[])", [text])
        assert [row[0] if row[0] is None or isinstance(row[0], dict) else json.loads(row[0])
                for row in cursor.fetchall()] == docs
