"""The models of ``user_tasks``: proxies of usertasks' (their rows are in usertasks' tables).

The migrations of this app carry the names and the order of django-user-tasks' own, so that a
project's migrations that depend on one of them (``("user_tasks", "0004_url_textfield")``) keep
resolving: on a database that had django-user-tasks, they are recorded as applied already (and
its tables are left for ``usertasks_import_user_tasks``); on a new database they create the
proxies.  ``0001_proxies`` was this migration's name in earlier releases of usertasks.
"""

from django.conf import settings
from django.db import migrations


class Migration(migrations.Migration):

    initial = True

    replaces = [("user_tasks", "0001_proxies")]

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("usertasks", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name='UserTaskArtifact',
            fields=[
            ],
            options={
                'verbose_name': 'user task artifact',
                'verbose_name_plural': 'user task artifacts',
                'proxy': True,
                'indexes': [],
                'constraints': [],
            },
            bases=('usertasks.usertaskartifact',),
        ),
        migrations.CreateModel(
            name='UserTaskStatus',
            fields=[
            ],
            options={
                'verbose_name': 'user task status',
                'verbose_name_plural': 'user task statuses',
                'permissions': [('cancel_usertaskstatus', 'Can cancel user task status')],
                'proxy': True,
                'indexes': [],
                'constraints': [],
            },
            bases=('usertasks.usertaskstatus',),
        ),
    ]
