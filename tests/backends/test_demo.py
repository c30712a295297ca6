"""The demo's task declared with Django's ``@task``, started from its page."""

import pytest
from django.urls import reverse

from usertasks.models import UserTaskStatus
from usertasks.states import State

from ..helpers import wait_final

pytestmark = pytest.mark.django_db(transaction=True)


def test_demo_count_words(worker, user, client):
    client.force_login(user)
    response = client.post(reverse("demo-start", args=["count"]))
    assert response.status_code == 302
    row = UserTaskStatus.objects.get()
    assert response["Location"] == row.get_absolute_url()
    assert row.user == user and row.task_class == "demo.tasks.count_words" and row.name == "count_words"
    wait_final(row, timeout=60)
    assert row.state == State.SUCCEEDED, row.error
    assert row.completed_steps == row.total_steps == 40
    assert row.return_value["chapters"] == 40 and row.return_value["words"] >= 40 * 800
    assert row.artifacts.get().name == "Summary"
    assert row.message.endswith("(attempt 1)")
