"""Outcome counters of a task (``status.counts``): ``task.count(succeeded=..., failed=...)``."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("usertasks", "0004_arguments_rerun"),
    ]

    operations = [
        migrations.AddField(
            model_name="usertaskstatus",
            name="counts",
            field=models.JSONField(blank=True, default=dict, verbose_name="counts"),
        ),
    ]
