"""Emails when a task finishes (the email channel of the outbox): the content and who is told,
recorded and delivered in this process; and end to end through a worker process, whose emails
are read from a file-based backend."""

import os

import pytest
from django.core import mail
from django.core.checks import run_checks
from django.test import override_settings

from tests.helpers import wait_final, wait_for
from tests.tasks_web import make_task
from usertasks.models import FROM_ROW, UserTaskNotification
from usertasks.notifications import build_message, notify_states, send_notification
from usertasks.notify import drain
from usertasks.states import State

pytestmark = pytest.mark.django_db


def finish(status, state):
    """As the transaction that ends ``status`` does: record its notifications; then deliver."""
    status.save()
    UserTaskNotification.objects.record([(status.pk, state, FROM_ROW)])
    drain()


def test_email_has_text_html_and_absolute_link(user):
    task = make_task(user, "Export <course>", "Succeeded")
    finish(task, State.SUCCEEDED)
    assert len(mail.outbox) == 1
    msg = mail.outbox[0]
    assert msg.to == ["alice@example.com"]
    assert msg.subject == "Done: Export <course>"
    link = f"http://testserver/tasks/{task.uuid}/"
    assert link in msg.body
    html, mimetype = msg.alternatives[0]
    assert mimetype == "text/html" and f'href="{link}"' in html
    assert "Export &lt;course&gt;" in html and "<course>" not in html


def test_failed_email_carries_the_user_facing_error(user):
    task = make_task(user, "Import", "Failed", error="Row 17 is bad.", traceback="SECRET")
    finish(task, State.FAILED)
    assert "Failed: Import" == mail.outbox[0].subject
    assert "Row 17 is bad." in mail.outbox[0].body and "SECRET" not in mail.outbox[0].body


def test_strings_are_translated(user, settings):
    task = make_task(user, "Export", "Failed", error="bad")
    settings.LANGUAGE_CODE = "fr"
    message = build_message(task)
    assert message.subject == "Échec : Export"
    assert "Bonjour alice," in message.body and "Voir la tâche" in message.body
    assert "Échouée" in message.alternatives[0][0]


def test_email_uses_the_users_language(user, settings):
    task = make_task(user, "Export", "Succeeded")
    user.language = "fr"  # a user model with a ``language`` attribute
    assert build_message(task).subject == "Terminée : Export"


def test_children_never_email(user):
    parent = make_task(user, "Parent", "In Progress", is_container=True)
    child = make_task(user, "Child", "Succeeded", parent=parent)
    finish(child, State.SUCCEEDED)
    assert mail.outbox == []


def test_per_task_option(user):
    quiet = make_task(user, "Quiet", "Succeeded", options={"notify": False})
    failures_only = make_task(user, "Loud", "Succeeded", options={"notify": ["Failed"]})
    finish(quiet, State.SUCCEEDED)
    finish(failures_only, State.SUCCEEDED)
    assert mail.outbox == []
    failures_only.state = State.FAILED
    finish(failures_only, State.FAILED)
    assert len(mail.outbox) == 1


def test_global_setting(user):
    task = make_task(user, "T", "Succeeded")
    with override_settings(USERTASKS={"BASE_URL": "http://x", "NOTIFY": False}):
        finish(task, State.SUCCEEDED)
    with override_settings(USERTASKS={"BASE_URL": "http://x", "NOTIFY": ["Failed", "Canceled"]}):
        assert notify_states(task) == {State.FAILED, State.CANCELED}
        finish(task, State.SUCCEEDED)
        assert mail.outbox == [] and not UserTaskNotification.objects.exists()
        task.options = {"notify": True}  # the task's own option wins
        finish(task, State.SUCCEEDED)
    assert len(mail.outbox) == 1


def test_own_cancel_does_not_email_but_someone_elses_does(user, other_user):
    mine = make_task(user, "Mine", "Canceled", canceled_by=user)
    finish(mine, State.CANCELED)
    assert mail.outbox == []
    theirs = make_task(user, "Theirs", "Canceled", canceled_by=other_user)
    finish(theirs, State.CANCELED)
    assert mail.outbox[0].subject == "Canceled: Theirs"


def test_no_email_address_no_email(user):
    user.email = ""
    user.save()
    assert send_notification(make_task(user, "T", "Succeeded"), State.SUCCEEDED) is False


def test_base_url_check():
    ids = lambda: [m.id for m in run_checks()]  # noqa: E731
    with override_settings(USERTASKS={}):
        assert "usertasks.W002" in ids()
    with override_settings(USERTASKS={"NOTIFY": False}):
        assert "usertasks.W002" not in ids()
    with override_settings(USERTASKS={"BASE_URL": "https://example.com"}):
        assert "usertasks.W002" not in ids()


@pytest.mark.django_db(transaction=True)
def test_worker_emails_once_the_task_is_final(start_worker, user, tmp_path):
    from tests.tasks_web import web_notify_failed_only
    from usertasks.models import UserTaskStatus

    outbox = tmp_path / "mail"
    outbox.mkdir()
    start_worker(extra_env={"USERTASKS_TEST_EMAIL_DIR": str(outbox)})
    ok = web_notify_failed_only.send_for(user, ok=True, label="ok")
    bad = web_notify_failed_only.send_for(user, ok=False, label="bad")
    for status in (ok, bad):
        wait_final(status)
    assert UserTaskStatus.objects.get(pk=bad.pk).options["notify"] == ["Failed"]

    def mail():  # the file backend creates its file before it writes the message
        return "".join((outbox / f).read_text() for f in os.listdir(outbox))

    text = wait_for(lambda: f"/tasks/{bad.uuid}/" in mail() and mail(), message="the email")
    assert "Failed: Web notify bad" in text and f"http://testserver/tasks/{bad.uuid}/" in text
    assert "Web notify ok" not in text


def test_the_outbox_is_recorded_in_the_transaction_that_ends_the_task(user):
    """The writer's batch that stores a run's final state records its notification too: both
    or neither (here the batch is rolled back after the fact)."""
    from django.db import transaction

    from usertasks import transitions
    from usertasks.context import TaskContext
    from usertasks.models import EventKind, UserTaskStatus

    loud = make_task(user, "Loud run", "In Progress", worker="w1")
    quiet = make_task(user, "Quiet run", "In Progress", worker="w2", options={"notify": False})

    def end(row, notify):
        ctx = TaskContext(status_id=row.pk, message_id=row.task_id, actor_name="x", options={"notify": notify})
        ctx.worker = row.worker
        return transitions.end(ctx, State.SUCCEEDED, EventKind.SUCCEEDED)

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        transitions.apply([end(loud, None), end(quiet, False)])
        assert UserTaskNotification.objects.filter(status=loud).count() == 1
        raise Rollback
    assert not UserTaskNotification.objects.exists()
    assert UserTaskStatus.objects.get(pk=loud.pk).state == State.IN_PROGRESS

    transitions.apply([end(loud, None), end(quiet, False)])
    (row,) = UserTaskNotification.objects.all()
    assert (row.status_id, row.channel, row.state, row.sent) == (
        loud.pk, "usertasks.notify.email.EmailChannel", State.SUCCEEDED, None
    )
    assert mail.outbox == []  # nothing is sent by the thread that stored the state
    drain()
    assert len(mail.outbox) == 1 and "Loud run" in mail.outbox[0].subject
    assert UserTaskNotification.objects.get().sent is not None
    assert list(loud.events.filter(kind=EventKind.NOTIFIED).values_list("detail", flat=True)) == ["Notified by email."]
    drain()
    assert len(mail.outbox) == 1  # once
