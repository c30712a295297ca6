"""Objects of which each worker process has exactly one (its writer, its acker)."""

import os
import threading

__all__ = ["PerProcess"]


class PerProcess:
    """Makes ``factory()`` on first use in each process, and again in a forked child (whose
    copy of the parent's object has no running thread)."""

    def __init__(self, factory):
        self._factory = factory
        self._lock = threading.Lock()
        self._instance = None
        self._pid = None

    def get(self):
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._instance = self._factory()
                    self._pid = os.getpid()  # set last: a reader that sees it sees the instance
        return self._instance

    def current(self):
        """This process's object, or ``None`` if it has not made one."""
        instance = self._instance
        return instance if self._pid == os.getpid() else None

    def take(self):
        """Forget this process's object and return it (``None`` if it had none)."""
        with self._lock:
            instance = self.current()
            self._instance = self._pid = None
        return instance
