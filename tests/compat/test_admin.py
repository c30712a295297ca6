"""The admin of the ``user_tasks`` proxies takes usertasks' safe paths: no ``delete_selected``,
an active task is not deleted, a finished one goes with its stored files."""

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse

from user_tasks.models import UserTaskArtifact, UserTaskStatus

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.compat.urls")]


def test_compat_admin_deletes_only_finished_tasks_with_their_files(admin_client, user):
    active = UserTaskStatus.objects.create(user=user, name="active", task_class="x")
    done = UserTaskStatus.objects.create(user=user, name="done", task_class="x")
    done.start()
    done.succeed()
    art = UserTaskArtifact.objects.create(status=done, file=ContentFile(b"x", name="r.txt"))
    name, storage = art.file.name, art.file.storage
    changelist = admin_client.get(reverse("admin:user_tasks_usertaskstatus_changelist"))
    assert changelist.status_code == 200
    assert b"delete_selected" not in changelist.content and b"delete_tasks" in changelist.content
    assert admin_client.post(reverse("admin:user_tasks_usertaskstatus_delete", args=[active.pk]),
                             {"post": "yes"}).status_code == 403
    assert UserTaskStatus.objects.filter(pk=active.pk).exists()
    response = admin_client.post(reverse("admin:user_tasks_usertaskstatus_delete", args=[done.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not UserTaskStatus.objects.filter(pk=done.pk).exists() and not storage.exists(name)
