"""Results of tasks started through Django's task API (``usertasks.backends``).

* ``return_value``: what the task function returned, as JSON.
* ``user`` may be empty: such a task was enqueued outside ``usertasks.on_behalf_of()``, and only
  superusers see it.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("usertasks", "0005_counts"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="usertaskstatus",
            name="return_value",
            field=models.JSONField(blank=True, null=True, verbose_name="return value"),
        ),
        migrations.AlterField(
            model_name="usertaskstatus",
            name="user",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="usertaskstatus_set",
                related_query_name="usertaskstatus",
                to=settings.AUTH_USER_MODEL,
                verbose_name="user",
            ),
        ),
    ]
