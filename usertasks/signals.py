"""Django signals sent by usertasks.

``task_finished(sender=UserTaskStatus, status=<row>, state=<final state>)`` is sent once a task's
final state has been stored (in the process that stored it)."""

from django.dispatch import Signal

task_finished = Signal()
