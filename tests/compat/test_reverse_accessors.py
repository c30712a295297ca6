"""django-user-tasks' reverse accessors and lookups give the compatibility proxies."""

import pytest
from user_tasks.models import UserTaskArtifact, UserTaskStatus

pytestmark = pytest.mark.django_db

def test_reverse_accessors_and_lookups_of_django_user_tasks():
    from django.contrib.auth import get_user_model
    u = get_user_model().objects.create_user("a")
    parent = UserTaskStatus.objects.create(user=u, name="p", is_container=True, task_class="celery.chain")
    child = UserTaskStatus.objects.create(user=u, name="c", parent=parent, task_class="x")
    art = child.artifacts.create(text="hi")
    assert isinstance(art, UserTaskArtifact) and art.name == "Output"
    assert [type(a) for a in child.artifacts.all()] == [UserTaskArtifact]
    assert list(parent.usertaskstatus_set.all()) == [child]
    assert type(parent.usertaskstatus_set.get()) is UserTaskStatus
    assert {type(s) for s in u.usertaskstatus_set.all()} == {UserTaskStatus}
    assert u.usertaskstatus_set.count() == 2
    assert get_user_model().objects.filter(usertaskstatus__name="c").get() == u
