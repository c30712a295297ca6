"""The outbox of notifications (``UserTaskNotification``: one row per finished task and
channel, unique) and the event kinds ``notified`` and ``notification_failed``."""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('usertasks', '0006_task_results'),
    ]

    operations = [
        migrations.AlterField(
            model_name='usertaskevent',
            name='kind',
            field=models.CharField(choices=[('enqueued', 'Enqueued'), ('started', 'Started'), ('retrying', 'Retrying'), ('succeeded', 'Succeeded'), ('failed', 'Failed'), ('cancel_requested', 'Cancel requested'), ('canceled', 'Canceled'), ('timed_out', 'Timed out'), ('requeued', 'Requeued'), ('worker_lost', 'Worker lost'), ('never_started', 'Never started'), ('skipped', 'Skipped'), ('note', 'Note'), ('rerun', 'Run again'), ('notified', 'Notified'), ('notification_failed', 'Notification failed')], max_length=32, verbose_name='kind'),
        ),
        migrations.CreateModel(
            name='UserTaskNotification',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('channel', models.CharField(max_length=255, verbose_name='channel')),
                ('state', models.CharField(choices=[('Pending', 'Pending'), ('In Progress', 'In Progress'), ('Retrying', 'Retrying'), ('Succeeded', 'Succeeded'), ('Failed', 'Failed'), ('Canceled', 'Canceled')], max_length=20, verbose_name='state')),
                ('created', models.DateTimeField(default=django.utils.timezone.now, verbose_name='created')),
                ('due', models.DateTimeField(blank=True, null=True, verbose_name='due')),
                ('sent', models.DateTimeField(blank=True, null=True, verbose_name='sent')),
                ('attempts', models.PositiveIntegerField(default=0, verbose_name='attempts')),
                ('last_error', models.TextField(blank=True, default='', verbose_name='last error')),
                ('claim', models.CharField(blank=True, default='', max_length=32, verbose_name='claim')),
                ('claimed_until', models.DateTimeField(blank=True, null=True, verbose_name='claimed until')),
                ('status', models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING, related_name='notifications', to='usertasks.usertaskstatus', verbose_name='task')),
            ],
            options={
                'verbose_name': 'user task notification',
                'verbose_name_plural': 'user task notifications',
                'indexes': [models.Index(fields=['sent', 'due'], name='usertasks_notification_due')],
                'constraints': [models.UniqueConstraint(fields=('status', 'channel'), name='usertasks_notification_once')],
            },
        ),
    ]
