"""Fewer index entries per write of a status row or an event.

* ``task_id`` and ``unique_key`` are unique through constraints instead of ``unique=True``,
  which on PostgreSQL also built a ``LIKE``-pattern index on each.
* ``user`` has no index of its own: ``usertasks_user_created`` starts with it.
* ``parent``, ``canceled_by`` and the events' ``actor`` are NULL for most rows: partial indexes
  leave those out.

The new indexes and constraints are created before the old ones are dropped.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('usertasks', '0001_initial'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddIndex(
            model_name='usertaskevent',
            index=models.Index(condition=models.Q(('actor__isnull', False)), fields=['actor'], name='usertasks_event_actor'),
        ),
        migrations.AddIndex(
            model_name='usertaskstatus',
            index=models.Index(condition=models.Q(('parent__isnull', False)), fields=['parent'], name='usertasks_parent'),
        ),
        migrations.AddIndex(
            model_name='usertaskstatus',
            index=models.Index(condition=models.Q(('canceled_by__isnull', False)), fields=['canceled_by'], name='usertasks_canceled_by'),
        ),
        migrations.AddConstraint(
            model_name='usertaskstatus',
            constraint=models.UniqueConstraint(fields=('task_id',), name='usertasks_task_id_unique'),
        ),
        migrations.AddConstraint(
            model_name='usertaskstatus',
            constraint=models.UniqueConstraint(fields=('unique_key',), name='usertasks_unique_key'),
        ),
        migrations.AlterField(
            model_name='usertaskevent',
            name='actor',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL, verbose_name='by'),
        ),
        migrations.AlterField(
            model_name='usertaskstatus',
            name='canceled_by',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL, verbose_name='canceled by'),
        ),
        migrations.AlterField(
            model_name='usertaskstatus',
            name='parent',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='children', to='usertasks.usertaskstatus', verbose_name='parent'),
        ),
        migrations.AlterField(
            model_name='usertaskstatus',
            name='task_id',
            field=models.CharField(help_text='Message id of the Dramatiq message (or Celery task id).', max_length=128, verbose_name='task ID'),
        ),
        migrations.AlterField(
            model_name='usertaskstatus',
            name='unique_key',
            field=models.CharField(blank=True, max_length=255, null=True, verbose_name='unique key'),
        ),
        migrations.AlterField(
            model_name='usertaskstatus',
            name='user',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to=settings.AUTH_USER_MODEL, verbose_name='user'),
        ),
    ]
