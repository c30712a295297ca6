"""Single Celery user tasks on a real worker (protocol 1 and 2) and in eager mode."""

import logging

import pytest
from django.core.files.storage import storages

from user_tasks import user_task_stopped
from user_tasks.exceptions import TaskCanceledException
from user_tasks.models import UserTaskArtifact, UserTaskStatus
from usertasks import Aborted
from usertasks.models import EventKind
from usertasks.models import UserTaskStatus as CoreStatus

from . import celerytasks
from .helpers import side_effects, wait_state

pytestmark = pytest.mark.django_db(transaction=True)

FINAL = ("Succeeded", "Failed", "Canceled")


@pytest.fixture
def stopped():
    received = []

    def receiver(sender, status, **kwargs):
        received.append((sender, status.task_id, status.state))

    user_task_stopped.connect(receiver)
    yield received
    user_task_stopped.disconnect(receiver)


def test_publish_writes_a_pending_row(celery_app, protocol, user):
    # No worker consumes this queue: the row stays Pending.
    result = celerytasks.count.apply_async((user.pk, 3), queue="nobody-listens")
    status = UserTaskStatus.objects.get(task_id=result.id)
    assert status.state == UserTaskStatus.PENDING
    assert (status.name, status.total_steps, status.completed_steps) == ("Count to 3", 3, 0)
    assert status.task_class == "compat.count"
    assert status.backend == "celery"
    assert status.queue_name == "nobody-listens"
    assert status.user == user and status.parent is None and not status.is_container
    assert status.attempts == 1
    assert list(status.events.values_list("kind", flat=True)) == [EventKind.ENQUEUED]
    # The same row, seen from usertasks: it is on the dashboard like any other task.
    assert CoreStatus.objects.for_user(user).get().pk == status.pk
    assert isinstance(CoreStatus.objects.get(pk=status.pk), CoreStatus)


def test_success(celery_worker, user, redis, stopped):
    result = celerytasks.count.delay(user.pk, 4, label="ok")
    status = wait_state(UserTaskStatus.objects.get(task_id=result.id), FINAL)
    assert status.state == UserTaskStatus.SUCCEEDED
    assert (status.completed_steps, status.total_steps) == (4, 4)
    assert status.started and status.finished and status.started <= status.finished
    assert status.worker.startswith("celery:")
    assert side_effects(redis, "ok") == 1
    kinds = list(status.events.values_list("kind", flat=True))
    assert kinds == [EventKind.ENQUEUED, EventKind.STARTED, EventKind.SUCCEEDED]
    assert result.get(timeout=30) == 4


def test_failure(celery_worker, user, redis):
    result = celerytasks.fail.delay(user_id=user.pk, label="bad")
    status = wait_state(UserTaskStatus.objects.get(task_id=result.id), FINAL)
    assert status.state == UserTaskStatus.FAILED
    assert status.error == "Bad input: bad"
    assert status.error_class == "builtins.ValueError"
    assert "Traceback" in status.traceback and "Traceback" not in status.error
    # As in django-user-tasks, the message is also an "Error" artifact.
    assert list(status.artifacts.values_list("name", "text")) == [("Error", "Bad input: bad")]


def test_retry_then_success(celery_worker, user, redis):
    result = celerytasks.flaky.delay(user.pk, label="flaky")
    status = UserTaskStatus.objects.get(task_id=result.id)
    wait_state(status, FINAL)
    assert status.state == UserTaskStatus.SUCCEEDED
    assert status.attempts == 2
    assert side_effects(redis, "flaky") == 2
    kinds = list(status.events.values_list("kind", flat=True))
    assert kinds == [EventKind.ENQUEUED, EventKind.STARTED, EventKind.RETRYING, EventKind.STARTED,
                     EventKind.SUCCEEDED]


def test_every_status_method(celery_worker, user, redis):
    result = celerytasks.stages.delay(user.pk, label="st")
    status = wait_state(UserTaskStatus.objects.get(task_id=result.id), FINAL)
    assert status.state == UserTaskStatus.SUCCEEDED
    assert status.name == "Stages st"
    assert (status.completed_steps, status.total_steps) == (3, 3)
    assert status.message == "Sending emails"
    arts = {a.name: a for a in UserTaskArtifact.objects.filter(status=status)}
    assert arts["Output"].text == "hello"
    assert arts["Link"].url == "https://example.com/r"
    with arts["Report"].file.open("rb") as fh:
        assert fh.read() == b"a,b\n"
    assert str(arts["Output"]) == "<UserTaskArtifact: (Output) hello>"


def test_task_that_fails_itself_stays_failed(celery_worker, user, redis):
    result = celerytasks.fails_itself.delay(user.pk, label="self")
    status = UserTaskStatus.objects.get(task_id=result.id)
    wait_for_side_effect = wait_state(status, FINAL)
    assert wait_for_side_effect.state == UserTaskStatus.FAILED
    result.get(timeout=30)
    status.refresh_from_db()
    assert status.state == UserTaskStatus.FAILED and status.error == "gave up"


def test_missing_or_invalid_user_id_is_logged(celery_app, protocol, user, caplog, transactional_db):
    caplog.set_level(logging.ERROR, logger="user_tasks")
    a = celerytasks.no_user.apply_async((3,), queue="nobody-listens")
    b = celerytasks.count.apply_async((987654, 2), queue="nobody-listens")
    c = celerytasks.count.apply_async(("not-a-pk", 2), queue="nobody-listens")
    assert not UserTaskStatus.objects.filter(task_id__in=[a.id, b.id, c.id]).exists()
    text = caplog.text
    assert "must include the user_id" in text
    assert "Invalid user_id: 987654" in text
    assert "Invalid user_id: not-a-pk" in text


def test_untracked_plain_task_is_ignored(celery_worker, redis):
    result = celerytasks.plain.delay(label="plain")
    assert result.get(timeout=30) == 1
    assert not UserTaskStatus.objects.exists()


# -- eager mode ---------------------------------------------------------------------------------


def test_eager_success(eager, user, redis, stopped):
    result = celerytasks.count.delay(user.pk, 3, label="eager")
    assert result.get() == 3
    status = UserTaskStatus.objects.get(task_id=result.id)
    assert status.state == UserTaskStatus.SUCCEEDED
    assert (status.completed_steps, status.total_steps) == (3, 3)
    assert status.name == "Count to 3"
    assert stopped == [(UserTaskStatus, result.id, "Succeeded")]


def test_eager_failure_and_stages(eager, user, redis, stopped):
    failed = celerytasks.fail.delay(user.pk, label="e")
    status = UserTaskStatus.objects.get(task_id=failed.id)
    assert status.state == UserTaskStatus.FAILED and status.error == "Bad input: e"
    staged = celerytasks.stages.delay(user.pk, label="e")
    status = UserTaskStatus.objects.get(task_id=staged.id)
    assert status.state == UserTaskStatus.SUCCEEDED and status.artifacts.count() == 3
    assert [s[2] for s in stopped] == ["Failed", "Succeeded"]


# -- the model API without Celery --------------------------------------------------------------


def _row(user, **kwargs):
    fields = dict(user=user, name="t", task_class="x.y", total_steps=4)
    fields.update(kwargs)
    return UserTaskStatus.objects.create(**fields)


def test_status_methods_directly(user, transactional_db, stopped):
    status = _row(user)
    assert status.backend == "celery" and status.task_id
    assert str(status) == "<UserTaskStatus: t>"
    assert status.state_text == "Pending"
    status.start()
    assert status.state == UserTaskStatus.IN_PROGRESS and status.started
    status.increment_completed_steps(2)
    status.increment_total_steps(1)
    assert (status.completed_steps, status.total_steps) == (2, 5)
    status.set_state("Crunching")
    # A custom state is stored as it is given, and is In Progress to everything else.
    assert status.state == "Crunching" and status.state_text == "Crunching"
    assert UserTaskStatus.objects.filter(state="Crunching").get() == status
    assert status.effective_state == UserTaskStatus.IN_PROGRESS and status.is_active
    assert UserTaskStatus.objects.active().filter(pk=status.pk).exists()
    status.retry()
    assert status.state == UserTaskStatus.RETRYING and status.attempts == 2
    status.start()
    status.succeed()
    assert status.state == UserTaskStatus.SUCCEEDED
    assert status.completed_steps == 5 and status.finished
    assert status.state_text == "Succeeded"
    # Final states are final: late calls change nothing.
    status.fail("late")
    status.refresh_from_db()
    assert status.state == UserTaskStatus.SUCCEEDED and not status.artifacts.exists()
    assert stopped == [(UserTaskStatus, status.task_id, "Succeeded")]


def test_cancel_a_running_row_stops_it_at_the_next_progress_call(user, other_user, transactional_db):
    status = _row(user)
    status.start()
    assert status.cancel(by=other_user) is True
    status.refresh_from_db()
    assert status.cancel_requested and status.canceled_by == other_user
    with pytest.raises(TaskCanceledException):
        status.increment_completed_steps()
    with pytest.raises(Aborted):  # the same exception is a usertasks.Aborted
        status.set_state("more")
    assert issubclass(TaskCanceledException, RuntimeError)


def test_container_aggregates_and_names(user, transactional_db):
    group = _row(user, is_container=True, task_class="celery.group", total_steps=0)
    a = _row(user, parent=group, total_steps=0)
    b = _row(user, parent=group, total_steps=0)
    a.increment_total_steps(2)
    b.increment_total_steps(3)
    group.refresh_from_db()
    assert group.total_steps == 5
    a.start()
    group.refresh_from_db()
    assert group.state == UserTaskStatus.IN_PROGRESS
    a.set_name("renamed")
    group.refresh_from_db()
    assert group.name == "renamed"
    a.succeed()
    group.refresh_from_db()
    assert group.state == UserTaskStatus.IN_PROGRESS and group.completed_steps == 2
    b.start()
    b.succeed()
    group.refresh_from_db()
    assert group.state == UserTaskStatus.SUCCEEDED and group.completed_steps == 5
    assert group.children_succeeded == 2
    assert isinstance(a.parent, UserTaskStatus)


def test_artifact_storage_alias_is_honoured(user, transactional_db, settings, tmp_path):
    from django.core.files.base import ContentFile

    settings.STORAGES = dict(settings.STORAGES, user_task_artifacts={
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path)},
    })
    from user_tasks.conf import settings as ut_settings

    status = _row(user)
    art = UserTaskArtifact.objects.create(status=status, file=ContentFile(b"x", name="a.txt"))
    assert art.name == "Output"
    assert (tmp_path / art.file.name).read_bytes() == b"x"
    assert ut_settings.USER_TASKS_ARTIFACT_STORAGE.location == str(tmp_path)
    assert storages["user_task_artifacts"].exists(art.file.name)


def test_arguments_as_dict_and_default_hooks():
    assert celerytasks.count.arguments_as_dict(5, 3) == {"user_id": 5, "n": 3, "label": "x", "delay": 0.0}
    assert celerytasks.count.arguments_as_dict(user_id=5, n=3, label="y")["label"] == "y"
    assert celerytasks.unbound.arguments_as_dict(5, 3, 4, label="z", k=1) == {
        "user_id": 5, "n": 3, "rest": (4,), "label": "z", "extra": {"k": 1}}
    assert celerytasks.fail.generate_name({}) == "fail"
    assert celerytasks.fail.calculate_total_steps({}) == 1
    assert celerytasks.count.generate_name({"n": 7}) == "Count to 7"


def test_unbound_task_is_tracked(eager, user, redis):
    result = celerytasks.unbound.delay(user.pk, 2, label="ub")
    assert result.get() == 2
    assert UserTaskStatus.objects.get(task_id=result.id).state == UserTaskStatus.SUCCEEDED
