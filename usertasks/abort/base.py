"""The interface of an abort flag store."""


class AbortBackend:
    """Where cancel requests of running tasks are signalled to the workers.

    A flag is keyed by the primary key of the status row.  It has no expiry: it stays until
    :meth:`clear` is called for a task that is final (by the worker that ends the task, by the
    worker that skips a canceled message, or by the reaper).  Every method may raise when the
    store is unreachable; callers decide what that means.
    """

    #: Seconds between two checks of the flags of the running tasks of a worker process.
    poll_interval = 0.05

    def set(self, status_id):
        """Raise the flag of ``status_id``."""
        raise NotImplementedError

    def flagged(self, status_ids):
        """The subset of ``status_ids`` whose flag is raised, in one round trip."""
        raise NotImplementedError

    def is_set(self, status_id):
        return status_id in self.flagged([status_id])

    def clear(self, status_ids):
        """Remove the flags of ``status_ids`` (tasks that are final)."""
        raise NotImplementedError

    def all_flagged(self):
        """Every raised flag (for the reaper's clean-up); may be empty if not enumerable."""
        return set()
