"""The models of ``user_tasks`` as the migrations before ``0006_proxies`` know them.

The migrations of this app carry the names and the order of django-user-tasks' own, so that a
project's migrations that depend on one of them (``("user_tasks", "0004_url_textfield")``, as
Open edX has) keep resolving, on a new database and on one that had django-user-tasks.  Until
``0006_proxies`` the two models are, for Django's migration state only, unmanaged stand-ins on
usertasks' tables: a project's foreign key created meanwhile references
``usertasks_usertaskstatus`` with its primary key's type.  Nothing here touches the database.

This migration is never used itself: ``0001_after_django_user_tasks`` replaces it (see there).
"""

from django.conf import settings
from django.db import migrations, models


def stand_ins():
    """The operations of this migration (and of the one that replaces it)."""
    return [
        migrations.CreateModel(
            name="UserTaskStatus",
            fields=[("id", models.BigAutoField(primary_key=True, serialize=False))],
            options={"db_table": "usertasks_usertaskstatus", "managed": False},
        ),
        migrations.CreateModel(
            name="UserTaskArtifact",
            fields=[("id", models.BigAutoField(primary_key=True, serialize=False))],
            options={"db_table": "usertasks_usertaskartifact", "managed": False},
        ),
    ]


class Migration(migrations.Migration):
    initial = True

    dependencies = [migrations.swappable_dependency(settings.AUTH_USER_MODEL)]

    operations = stand_ins()
