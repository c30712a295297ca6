"""``0001_initial``, made so that ``manage.py migrate`` works where django-user-tasks ran.

There ``("user_tasks", "0001_initial")`` is recorded as applied (by django-user-tasks, before
usertasks was installed).  Django refuses a history where an applied migration depends on one
that is not, and this app must come after usertasks' first migration (a project's foreign key to
``user_tasks.UserTaskStatus`` references usertasks' table).  So this migration replaces
``0001_initial``, as a squashed migration does, with the same operations: where ``0001_initial``
is recorded, Django takes this one as applied in its place, leaves the recorded name out of its
consistency check and records this one once usertasks' migrations have run; elsewhere it runs
after usertasks' first migration.  Dependencies on ``0001_initial`` are redirected here.
"""

import importlib

from django.conf import settings
from django.db import migrations

first = importlib.import_module("user_tasks.migrations.0001_initial")


class Migration(migrations.Migration):
    initial = True

    replaces = [("user_tasks", "0001_initial")]

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("usertasks", "0001_initial"),
    ]

    operations = first.stand_ins()
