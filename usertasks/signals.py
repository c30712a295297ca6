"""Django signals sent by usertasks.

``task_finished(sender=UserTaskStatus, status=<row>, state=<final state>)`` is sent once a task's
final state has been stored (in the process that stored it)."""

from django.dispatch import Signal

task_finished = Signal()


def send_task_finished(status_id, state, *, using=None):
    """Send :data:`task_finished` for a task that a cancel or the reaper made final (outside a
    worker run), once the current transaction commits.  Receivers' errors are logged."""
    import logging

    from django.db import transaction

    def send():
        from .models import UserTaskStatus

        status = UserTaskStatus.objects.using(using).filter(pk=status_id).first()
        if status is None:
            return
        for receiver, response in task_finished.send_robust(
            sender=UserTaskStatus, status=status, state=state, status_id=status.pk, parent_id=status.parent_id,
            notify=(status.options or {}).get("notify"),
        ):
            if isinstance(response, Exception):
                logging.getLogger("usertasks").error("usertasks: task_finished receiver %r failed: %r", receiver, response)

    if task_finished.receivers:
        transaction.on_commit(send, using=using)
