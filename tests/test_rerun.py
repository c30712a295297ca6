"""Stored input (``status.arguments``, ``sensitive=``) and ``status.rerun(by=user)``."""

import math

import dramatiq
import pytest
from django.db import transaction

from usertasks import pipeline, user_task
from usertasks.exceptions import RerunError
from usertasks.models import EventKind, UserTaskEvent, UserTaskStatus
from usertasks.purge import purge
from usertasks.states import State

from . import tasks_core, tasks_fanout, tasks_rerun
from .helpers import wait_final, wait_for
from .tasks_web import make_task

pytestmark = pytest.mark.django_db(transaction=True)


def counts():
    return UserTaskStatus.objects.count(), UserTaskEvent.objects.count()


def finish(status, state=State.FAILED):
    """End a row that no worker ran (the tests that need no run)."""
    UserTaskStatus.objects.filter(pk=status.pk).update(state=state)
    status.refresh_from_db()
    return status


# -- what is stored -------------------------------------------------------------------------------


def test_send_for_stores_args_and_kwargs_as_sent(user):
    status = tasks_rerun.fails_once.send_for(user, "a", 3, fmt="xlsx")
    assert status.arguments == {"args": ["a", 3], "kwargs": {"fmt": "xlsx"}}
    status.refresh_from_db()
    assert status.arguments == {"args": ["a", 3], "kwargs": {"fmt": "xlsx"}}
    rows = tasks_core.indexed.send_many_for(user, [(1, 2), {"a": 3, "b": [4, {"x": None}]}])
    assert [UserTaskStatus.objects.get(pk=r.pk).arguments for r in rows] == [
        {"args": [1, 2], "kwargs": {}},
        {"args": [], "kwargs": {"a": 3, "b": [4, {"x": None}]}},
    ]


def test_pipeline_stages_store_their_arguments(user):
    container = pipeline(user, [tasks_core.indexed.message(1, 2), tasks_core.named.message("c101", lang="fr")])
    stages = list(container.stages())
    assert [s.arguments for s in stages] == [
        {"args": [1, 2], "kwargs": {}},
        {"args": ["c101"], "kwargs": {"lang": "fr"}},
    ]
    assert container.arguments is None


def test_input_json_cannot_hold_is_not_stored_but_the_task_is_sent(user):
    # NaN goes into a message (Dramatiq's JSON allows it) but not into PostgreSQL's jsonb.
    status = tasks_core.indexed.send_for(user, math.nan, 1)
    assert UserTaskStatus.objects.get(pk=status.pk).arguments is None
    rows = tasks_core.indexed.send_many_for(user, [(1, 2), (math.inf, 2)])
    assert [UserTaskStatus.objects.get(pk=r.pk).arguments for r in rows] == [{"args": [1, 2], "kwargs": {}}, None]


def test_fan_out_children_store_their_arguments(user, worker):
    status = wait_final(tasks_fanout.fan_parent.send_for(user, 5, label="args"))
    assert status.state == State.SUCCEEDED
    children = {c.name: c.arguments for c in status.children.all()}
    assert children["Child 3"] == {"args": [], "kwargs": {"i": 3, "label": "args", "fail": False, "delay": 0.0}}
    assert len(children) == 5
    # A child runs again as a task of its own, outside its container.
    child = status.children.get(name="Child 3")
    again = child.rerun(by=user)
    assert again.parent_id is None and again.rerun_of_id == child.pk and again.user_id == user.pk
    assert wait_final(again).state == State.SUCCEEDED
    assert status.refresh().children_total == 5


# -- sensitive arguments --------------------------------------------------------------------------


def test_sensitive_arguments_are_never_stored(user, redis):
    status = tasks_rerun.sign_in.send_for(user, "alice", "hunter2", remember=True)
    row = UserTaskStatus.objects.get(pk=status.pk)
    assert row.arguments == {"args": [], "kwargs": {"username": "alice", "remember": True}, "omitted": ["password"]}
    by_keyword = tasks_rerun.sign_in.send_for(user, username="bob", password="s3cret")
    assert UserTaskStatus.objects.get(pk=by_keyword.pk).arguments["omitted"] == ["password"]
    everything = UserTaskStatus.objects.filter(pk__in=[status.pk, by_keyword.pk]).values()
    assert "hunter2" not in repr(list(everything)) and "s3cret" not in repr(list(everything))
    assert not row.is_rerunnable
    finish(row)
    before = counts()
    with pytest.raises(RerunError, match=r"sensitive arguments \(password\) were not stored"):
        row.rerun(by=user)
    assert counts() == before


def test_sensitive_argument_not_given_keeps_the_input_whole(user):
    status = tasks_rerun.sign_in.send_for(user, "carol")
    assert UserTaskStatus.objects.get(pk=status.pk).arguments == {"args": ["carol"], "kwargs": {}}


def test_sensitive_extra_keyword_is_left_out(user):
    status = tasks_rerun.sign_in.send_for(user, "dan", token="abc", note="hi")

    @user_task(actor_name="rerun_extra_sensitive", sensitive=("token",))
    def extra(task, username, **rest):
        pass

    row = extra.send_for(user, "dan", token="abc", note="hi")
    assert UserTaskStatus.objects.get(pk=row.pk).arguments == {
        "args": [],
        "kwargs": {"username": "dan", "note": "hi"},
        "omitted": ["token"],
    }
    assert UserTaskStatus.objects.get(pk=status.pk).arguments["kwargs"]["token"] == "abc"  # not sensitive there


def test_sensitive_unique_key_does_not_hold_the_secret(user):
    @user_task(actor_name="rerun_unique_secret", unique=True, sensitive=("password",))
    def guarded(task, username, password):
        pass

    first = guarded.send_for(user, "eve", "topsecret")
    again = guarded.send_for(user, "eve", "topsecret")
    assert again.pk == first.pk  # still deduplicated
    key = UserTaskStatus.objects.get(pk=first.pk).unique_key
    assert "topsecret" not in key and key.startswith("rerun_unique_secret:")


def test_sensitive_must_name_a_parameter():
    with pytest.raises(TypeError, match="sensitive names no parameter: pasword"):

        @user_task(actor_name="rerun_typo", sensitive=("pasword",))
        def typo(task, password):
            pass


# -- re-running -----------------------------------------------------------------------------------


def test_rerun_of_a_failed_task_runs_with_the_same_input_and_owner(user, other_user, worker, django_user_model):
    original = wait_final(tasks_rerun.fails_once.send_for(user, "export-1", 7, fmt="xlsx"))
    assert original.state == State.FAILED and original.is_rerunnable
    boss = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw")

    again = original.rerun(by=boss)
    assert again.pk != original.pk and again.rerun_of_id == original.pk
    assert again.user_id == user.pk  # the owner's task, whoever asked
    assert again.task_class == "fails_once" and again.name == "Fails once export-1"
    wait_final(again)
    assert again.state == State.SUCCEEDED
    assert again.artifacts.get().text == "export-1:7:xlsx"
    assert again.arguments == original.arguments
    assert list(original.reruns.all()) == [again]

    event = original.events.get(kind=EventKind.RERUN)
    assert event.actor == boss and str(again.uuid) in event.detail
    assert original.refresh().state == State.FAILED  # the original stays as it was

    # A re-run of the re-run: its rerun_of is the one it was started from.
    third = again.rerun(by=user)
    assert third.rerun_of_id == again.pk
    assert wait_final(third).state == State.SUCCEEDED


@pytest.mark.parametrize("state", [State.PENDING, State.IN_PROGRESS, State.RETRYING])
def test_rerun_of_an_active_task_is_refused(user, state):
    status = make_task(user, "Busy", state, arguments={"args": [], "kwargs": {"label": "x"}})
    before = counts()
    with pytest.raises(RerunError, match=f"Only a finished task can be run again; this one is {state}"):
        status.rerun(by=user)
    assert counts() == before


@pytest.mark.parametrize("state", [State.SUCCEEDED, State.FAILED, State.CANCELED])
def test_every_final_state_may_be_rerun(user, state, redis):
    status = finish(tasks_rerun.fails_once.send_for(user, f"final-{state}"), state)
    again = status.rerun(by=user)
    assert again.rerun_of_id == status.pk and again.state == State.PENDING


def test_rerun_whose_actor_is_gone_writes_nothing(user):
    status = finish(tasks_rerun.fails_once.send_for(user, "gone"))
    UserTaskStatus.objects.filter(pk=status.pk).update(task_class="renamed_in_a_later_release")
    status.refresh_from_db()
    before = counts()
    with pytest.raises(RerunError, match="'renamed_in_a_later_release' is not registered on the broker"):
        status.rerun(by=user)
    assert counts() == before


def test_rerun_of_a_plain_actor_is_refused(user):
    @dramatiq.actor(actor_name="rerun_plain_actor")
    def plain(x):
        pass

    status = make_task(user, "Plain", "Failed", arguments={"args": [1], "kwargs": {}})
    UserTaskStatus.objects.filter(pk=status.pk).update(task_class="rerun_plain_actor")
    status.refresh_from_db()
    with pytest.raises(RerunError, match="is not a user task"):
        status.rerun(by=user)


@pytest.mark.parametrize(
    "arguments, why",
    [
        ({"args": [], "kwargs": {"label": "x", "colour": "red"}}, "unexpected keyword argument 'colour'"),
        ({"args": [], "kwargs": {}}, "missing a required argument: 'label'"),
        ({"args": [1, 2, 3, 4], "kwargs": {}}, "too many positional arguments"),
    ],
)
def test_rerun_whose_arguments_no_longer_bind_writes_nothing(user, arguments, why):
    status = finish(tasks_rerun.fails_once.send_for(user, "sig"))
    UserTaskStatus.objects.filter(pk=status.pk).update(arguments=arguments)
    status.refresh_from_db()
    before = counts()
    with pytest.raises(RerunError, match=f"no longer fit fails_once: .*{why}"):
        status.rerun(by=user)
    assert counts() == before


@pytest.mark.parametrize(
    "fields, why",
    [
        ({"arguments": None}, "input of this task was not stored"),
        ({"arguments": {"args": "x"}}, "stored input of this task is not valid"),
        ({"arguments": ["x"]}, "stored input of this task is not valid"),
        ({"backend": "celery"}, "Only tasks run on Dramatiq can be run again"),
        ({"task_class": "usertasks.pipeline"}, "A pipeline cannot be run again"),
    ],
)
def test_rerun_refusals_say_why(user, fields, why):
    status = finish(tasks_rerun.fails_once.send_for(user, "why"))
    UserTaskStatus.objects.filter(pk=status.pk).update(**fields)
    status.refresh_from_db()
    assert not status.is_rerunnable
    before = counts()
    with pytest.raises(RerunError, match=why):
        status.rerun(by=user)
    assert counts() == before


def test_rerun_of_a_deleted_task(user):
    status = finish(tasks_rerun.fails_once.send_for(user, "deleted"))
    UserTaskStatus.objects.filter(pk=status.pk).delete()
    with pytest.raises(RerunError, match="no longer exists"):
        status.rerun(by=user)


def test_rerun_of_a_unique_task_joins_the_identical_active_one(user, redis):
    done = finish(tasks_rerun.unique_job.send_for(user, "u1"), State.SUCCEEDED)
    UserTaskStatus.objects.filter(pk=done.pk).update(unique_key=None)  # a final task holds no key
    active = tasks_rerun.unique_job.send_for(user, "u1")
    assert active.pk != done.pk
    joined = done.rerun(by=user)
    assert joined.pk == active.pk and joined.rerun_of_id is None
    assert "Joined the identical active task" in done.events.get(kind=EventKind.RERUN).detail
    # Once that one has finished, the re-run is a new task.
    finish(active, State.SUCCEEDED)
    UserTaskStatus.objects.filter(pk=active.pk).update(unique_key=None)
    fresh = done.rerun(by=user)
    assert fresh.pk not in (done.pk, active.pk) and fresh.rerun_of_id == done.pk


def test_rerun_in_a_rolled_back_transaction_leaves_nothing(user, redis):
    status = finish(tasks_rerun.fails_once.send_for(user, "rollback"))
    redis.flushdb()
    before = counts()
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        status.rerun(by=user)
        1 / 0  # noqa: B018
    assert counts() == before
    assert not redis.keys("dramatiq:default*")


def test_purging_the_original_keeps_its_rerun(user, redis):
    from datetime import timedelta

    from django.utils import timezone

    original = finish(tasks_rerun.fails_once.send_for(user, "purge"))
    again = original.rerun(by=user)
    UserTaskStatus.objects.filter(pk=original.pk).update(finished=timezone.now() - timedelta(days=90))
    result = purge("30d")
    assert result.tasks == 1
    again.refresh_from_db()
    assert again.rerun_of_id is None
    assert not UserTaskStatus.objects.filter(pk=original.pk).exists()


def test_deleting_the_original_keeps_its_rerun(user, redis):
    original = finish(tasks_rerun.fails_once.send_for(user, "delete"))
    again = original.rerun(by=user)
    assert original.delete_with_files()
    again.refresh_from_db()
    assert again.rerun_of_id is None


def test_rerun_waits_for_its_worker_and_runs_once(user, worker, redis):
    original = wait_final(tasks_rerun.fails_once.send_for(user, "once"))
    again = original.rerun(by=user)
    wait_for(lambda: redis.get("side-effect:rerun-ok:once"), message="the re-run's body")
    assert wait_final(again).state == State.SUCCEEDED
    assert int(redis.get("side-effect:runs:once")) == 2
