"""Drop-in replacement for the ``user_tasks`` package of django-user-tasks 4.0, on usertasks.

Celery tasks written against django-user-tasks keep working unchanged; their status rows live
in the ``usertasks`` tables, so they show on the same dashboard and status pages as Dramatiq
tasks.  See ``docs/migration.md`` and ``docs/compat-differences.md``.
"""

from django.dispatch import Signal

__version__ = "4.0.0+usertasks"

#: Sent with ``status=<UserTaskStatus>`` when a task (not a container) reaches Succeeded, Failed
#: or Canceled.
user_task_stopped = Signal()
