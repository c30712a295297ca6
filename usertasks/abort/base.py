"""The interface of an abort flag store."""

from collections.abc import Callable

#: Results of :meth:`AbortBackend.claim`.
SKIP, FIRST, AGAIN = 0, 1, 2


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

    #: ``True`` when :meth:`claim` and :meth:`cancel_pending` are atomic with respect to each
    #: other.  Then a worker may run a task's body as soon as its claim succeeds; otherwise it
    #: waits until the start of the run is stored (the database decides a race with a cancel).
    atomic_claims = False

    def claim(self, status_id, parent_id=None):
        """Before a run: :data:`SKIP` when the task (or its container) is flagged and must not
        run; :data:`FIRST` when an atomic store recorded the first claim of the task (the body
        may start at once); :data:`AGAIN` otherwise (claimed before, e.g. a redelivery, or a
        store that cannot tell): the worker stores the start of the run before the body runs,
        and the database decides."""
        ids = [status_id] if parent_id is None else [status_id, parent_id]
        return SKIP if self.flagged(ids) else AGAIN

    #: ``claim_many(tasks)``: :meth:`claim` for many ``(status_id, parent_id)`` pairs in one round
    #: trip (a list of results), or ``None`` when the store cannot do it.  Atomic stores that have
    #: it let a worker claim the messages it prefetches, a batch at a time.
    claim_many: Callable[[list[tuple[int, int | None]]], list[int]] | None = None

    def shares_server(self, client):
        """Whether the Redis server of ``client`` (a broker's) holds this store's keys: then a
        consumer of that broker can claim the messages it fetches in the same round trip
        (``usertasks.redis``).  Only Redis stores can."""
        return False

    def cancel_pending(self, status_id):
        """Raise the flag of a task that looks not started; return ``True`` when a worker has
        claimed it already (it must then be treated as running).  Only meaningful when
        :attr:`atomic_claims` is true."""
        self.set(status_id)
        return False

    def cancel_pending_many(self, status_ids):
        """:meth:`cancel_pending` for many tasks at once; returns the set of claimed ones."""
        return {pk for pk in status_ids if self.cancel_pending(pk)}

    def claimed(self, status_ids):
        """The subset of ``status_ids`` that a worker has claimed (atomic stores only)."""
        return set()

    def release(self, status_id, *, clear_flag=False):
        """Forget the claim of a run that ended without making the task final (a retry is
        scheduled, or it was requeued), so a cancel before the next run is seen as "not
        started"; with ``clear_flag`` also remove the flag."""
        if clear_flag:
            self.clear([status_id])

    def all_flagged(self):
        """Every raised flag (for the reaper's clean-up); may be empty if not enumerable."""
        return set()
