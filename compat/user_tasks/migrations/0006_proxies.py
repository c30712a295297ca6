"""``user_tasks.UserTaskStatus`` and ``UserTaskArtifact`` become what they are: proxies of
usertasks' models (in Django's migration state only: nothing changes in the database)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("user_tasks", "0005_mariadb_uuid_conversion"),
        ("usertasks", "0001_initial"),
    ]

    operations = [
        migrations.DeleteModel(name="UserTaskArtifact"),
        migrations.DeleteModel(name="UserTaskStatus"),
        migrations.CreateModel(
            name="UserTaskArtifact",
            fields=[],
            options={
                "verbose_name": "user task artifact",
                "verbose_name_plural": "user task artifacts",
                "proxy": True,
                "indexes": [],
                "constraints": [],
            },
            bases=("usertasks.usertaskartifact",),
        ),
        migrations.CreateModel(
            name="UserTaskStatus",
            fields=[],
            options={
                "verbose_name": "user task status",
                "verbose_name_plural": "user task statuses",
                "permissions": [("cancel_usertaskstatus", "Can cancel user task status")],
                "proxy": True,
                "indexes": [],
                "constraints": [],
            },
            bases=("usertasks.usertaskstatus",),
        ),
    ]
