"""Groups, chains and chords as containers, on a real worker, for message protocol 1 and 2."""

import pytest
from celery import chain, chord, group

from user_tasks.models import UserTaskStatus
from usertasks.models import EventKind

from . import celerytasks
from ..helpers import wait_for
from .helpers import side_effects, wait_state

pytestmark = pytest.mark.django_db(transaction=True)

FINAL = ("Succeeded", "Failed", "Canceled")


def children(container):
    return list(UserTaskStatus.objects.filter(parent=container).order_by("id"))


def test_group(celery_worker, user, redis):
    result = group(
        celerytasks.count.s(user.pk, 2, label="g1"),
        celerytasks.count.s(user.pk, 3, label="g2"),
    ).apply_async()
    container = UserTaskStatus.objects.get(task_id=result.id)
    assert container.is_container and container.task_class == "celery.group"
    assert container.total_steps == 5 and container.children_total == 2
    assert result.get(timeout=60) == [2, 3]
    wait_state(container, FINAL)
    assert container.state == UserTaskStatus.SUCCEEDED
    assert container.completed_steps == 5 and container.children_succeeded == 2
    assert [c.state for c in children(container)] == ["Succeeded", "Succeeded"]
    assert side_effects(redis, "g1") == side_effects(redis, "g2") == 1


def test_chain(celery_worker, user, redis):
    u = user.pk
    result = chain(
        celerytasks.step.s(user_id=u, label="c1"),
        celerytasks.step.s(user_id=u, label="c2", value=10),
        celerytasks.step.s(user_id=u, label="c3", value=100),
    ).apply_async()
    first = UserTaskStatus.objects.get(task_id=result.parent.parent.id)
    container = first.parent
    assert container.is_container and container.task_class == "celery.chain"
    steps = children(container)
    # Every step has its row as soon as the chain is sent, in the order they run.
    assert [s.task_id for s in steps] == [result.parent.parent.id, result.parent.id, result.id]
    assert container.total_steps == 3 and container.children_total == 3
    assert result.get(timeout=60) == 111
    wait_state(container, FINAL)
    assert container.state == UserTaskStatus.SUCCEEDED and container.completed_steps == 3
    for s in steps:
        s.refresh_from_db()
        assert s.state == UserTaskStatus.SUCCEEDED
        assert list(s.events.values_list("kind", flat=True)) == [
            EventKind.ENQUEUED, EventKind.STARTED, EventKind.SUCCEEDED]
    assert UserTaskStatus.objects.count() == 4


def test_chain_with_a_failing_step_skips_the_rest(celery_worker, user, redis):
    u = user.pk
    result = chain(
        celerytasks.step.s(user_id=u, label="f1"),
        celerytasks.fail.si(u, label="f2"),
        celerytasks.step.s(user_id=u, label="f3"),
    ).apply_async()
    last = UserTaskStatus.objects.get(task_id=result.id)
    container = last.parent
    wait_state(container, FINAL)
    assert container.state == UserTaskStatus.FAILED
    assert [c.state for c in children(container)] == ["Succeeded", "Failed", "Canceled"]
    last.refresh_from_db()
    assert last.events.filter(kind=EventKind.SKIPPED).exists()
    assert container.artifacts.filter(name="Error", text="Bad input: f2").exists()
    assert side_effects(redis, "f3") == 0


def test_chain_step_that_fails_itself_and_returns_skips_the_rest(celery_worker, user, redis):
    """django-user-tasks ran the later steps of such a chain (Celery sees a success) under a
    Failed chain; here they are skipped: their input is the output of a failed step."""
    u = user.pk
    result = chain(
        celerytasks.step.s(user_id=u, label="g1"),
        celerytasks.fails_itself.si(u, label="g2"),
        celerytasks.step.s(user_id=u, label="g3"),
    ).apply_async()
    last = UserTaskStatus.objects.get(task_id=result.id)
    container = last.parent
    wait_state(container, FINAL)
    wait_state(last, FINAL)
    assert container.state == UserTaskStatus.FAILED
    assert [c.state for c in children(container)] == ["Succeeded", "Failed", "Canceled"]
    # (the step's body goes on after fail(), which ended the chain already)
    wait_for(lambda: side_effects(redis, "g2") == 1, 30, message="the failed step's body to return")
    assert side_effects(redis, "g3") == 0


def test_each_chain_and_chord_sends_user_task_stopped_once_without_a_parent(celery_worker, user, redis):
    """Open edX emails on user_task_stopped for tasks without a parent: once per canvas."""
    u = user.pk
    chained = chain(celerytasks.step.s(user_id=u, label="h1"), celerytasks.step.s(user_id=u, label="h2")).apply_async()
    chorded = chord([celerytasks.step.s(user_id=u, label="h3"), celerytasks.step.s(user_id=u, label="h4")])(
        celerytasks.collect.s(user_id=u, label="h5")
    )
    containers = [UserTaskStatus.objects.get(task_id=r.id).parent for r in (chained, chorded)]
    for container in containers:
        wait_state(container, FINAL)
        assert container.state == UserTaskStatus.SUCCEEDED and container.parent is None
        key = f"side-effect:compat:top-stopped:{container.task_id}"
        assert wait_for(lambda k=key: redis.get(k), 30, message="user_task_stopped of the container") == b"1"
    # The tasks inside sent theirs, with a parent.
    for container in containers:
        for task in UserTaskStatus.objects.filter(parent=container):
            wait_for(lambda t=task: redis.get(f"side-effect:compat:stopped:{t.task_id}"), 30, message="its signal")
            assert redis.get(f"side-effect:compat:top-stopped:{task.task_id}") is None


def test_chord(celery_worker, user, redis):
    u = user.pk
    result = chord(
        [celerytasks.step.s(user_id=u, label="h1", value=1), celerytasks.step.s(user_id=u, label="h2", value=2)],
        celerytasks.collect.s(user_id=u, label="body"),
    ).apply_async()
    body = UserTaskStatus.objects.get(task_id=result.id)
    outer = body.parent
    assert outer.is_container and outer.task_class == "celery.chord"
    header = UserTaskStatus.objects.get(parent=outer, is_container=True)
    assert header.task_class == "celery.group"
    assert len(children(header)) == 2
    assert outer.total_steps == 3  # two header tasks and the body, one step each
    assert result.get(timeout=60) == 3
    wait_state(outer, FINAL)
    assert outer.state == UserTaskStatus.SUCCEEDED and outer.completed_steps == 3
    header.refresh_from_db()
    body.refresh_from_db()
    assert header.state == body.state == UserTaskStatus.SUCCEEDED


def test_group_name_from_user_task_name(celery_worker, user, redis):
    result = group(
        celerytasks.count.s(user.pk, 1, label="n1", delay=0),
        celerytasks.count.s(user.pk, 1, label="n2"),
    ).apply_async()
    container = UserTaskStatus.objects.get(task_id=result.id)
    assert container.name == "Count to 1"  # the first task's name when none is given
    result.get(timeout=60)


def test_group_with_a_canceled_task_ends_canceled_when_the_rest_is_done(celery_app, protocol, user, transactional_db):
    result = group(celerytasks.count.s(user.pk, 1), celerytasks.count.s(user.pk, 2)).apply_async(
        queue="nobody-listens")
    container = UserTaskStatus.objects.get(task_id=result.id)
    a, b = children(container)
    assert a.cancel() is True
    container.refresh_from_db()
    assert container.state == UserTaskStatus.PENDING and container.children_canceled == 1
    b.start()
    b.succeed()
    container.refresh_from_db()
    assert container.state == UserTaskStatus.CANCELED
    assert (container.children_canceled, container.children_succeeded) == (1, 1)


def test_chain_with_a_canceled_running_step(celery_worker, user, redis):
    u = user.pk
    result = chain(
        celerytasks.count.si(u, 100, label="k1", delay=0.2),
        celerytasks.step.s(user_id=u, label="k2"),
    ).apply_async()
    first = UserTaskStatus.objects.get(task_id=result.parent.id)
    wait_state(first, "In Progress")
    first.cancel()
    container = wait_state(first.parent, FINAL)
    assert container.state == UserTaskStatus.CANCELED
    assert [c.state for c in children(container)] == ["Canceled", "Canceled"]
    assert side_effects(redis, "k2") == 0
