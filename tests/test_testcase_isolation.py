"""Nothing a Django ``TestCase`` does inside its rolled-back transaction survives in Redis: a
cancel there raises no abort flag, so the next test's task with the same primary key is not
canceled.  (``TestCase`` tests run in the order they are defined.)"""

from django.contrib.auth import get_user_model
from django.test import TestCase

from tests.tasks_core import indexed
from usertasks.abort import get_backend
from usertasks.models import UserTaskStatus


class CancelInsideATestCase(TestCase):
    def test_1_cancel_a_pending_task(self):
        user = get_user_model().objects.create_user("tc-user")
        status = indexed.send_for(user, 1, 2)
        assert status.cancel(by=user) is True
        status.refresh_from_db()
        assert status.state == "Canceled"
        assert not get_backend().is_set(status.pk)

    def test_2_a_new_task_is_not_canceled(self):
        user = get_user_model().objects.create_user("tc-user")
        status = indexed.send_for(user, 1, 2)
        assert not get_backend().is_set(status.pk)
        assert UserTaskStatus.objects.get(pk=status.pk).state == "Pending"
