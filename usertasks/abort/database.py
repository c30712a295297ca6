"""Abort flags in the database: the ``cancel_requested`` column of the status rows.

For sites without Redis (a RabbitMQ broker).  ``status.cancel()`` already stores
``cancel_requested``, so raising and clearing a flag cost nothing; a worker reads the flags of
all its running tasks in one query every ``poll_interval`` seconds.
"""

from .base import AbortBackend


class DatabaseAbortBackend(AbortBackend):
    poll_interval = 0.25

    def set(self, status_id):
        pass  # the cancel itself wrote cancel_requested

    def flagged(self, status_ids):
        from ..models import UserTaskStatus

        ids = list(status_ids)
        if not ids:
            return set()
        return set(
            UserTaskStatus.objects.filter(pk__in=ids, cancel_requested__isnull=False).values_list("pk", flat=True)
        )

    def clear(self, status_ids):
        pass
