"""The object a user task receives as its first argument.

``step()`` touches only memory: a per-process writer thread (``usertasks.writer``) stores the
progress of every running task at most ``PROGRESS_INTERVAL`` seconds later, and the final
values exactly when the task ends.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import operator
import os
import socket
import threading
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .exceptions import Aborted
from .sql import MAX_COUNT, storable
from .text import clip

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from .models import UserTaskArtifact, UserTaskStatus

_current: ContextVar[TaskContext | None] = ContextVar("usertasks_current_task", default=None)

_HOST = socket.gethostname()


#: The longest name of an outcome counter (``TaskContext.count``).
MAX_COUNTER_NAME = 64

_runs = itertools.count(1)
_process: tuple[int | None, str] = (None, "")  # (pid, random prefix of this process's run tokens)


def _run_token() -> str:
    """``host:pid:thread:<prefix><n>``, unique to one run: the prefix is drawn at random once per
    process (so a reused pid cannot repeat a token) and ``n`` counts the process's runs.  A fresh
    random value per run would cost a system call that gives up the GIL for every message."""
    global _process
    pid = os.getpid()
    if _process[0] != pid:  # first run of this process (or of a forked child)
        _process = (pid, os.urandom(4).hex())
    return f"{_HOST}:{pid}:{threading.current_thread().name}:{_process[1]}{next(_runs):x}"


#: Longest message the status row's column holds (``MESSAGE_MAX_LENGTH`` is cut to it).
MESSAGE_COLUMN_LENGTH = 1000


def _count(n: Any, what: str) -> int:
    """``n`` as a count of steps, or a clear error: a whole number from 0 to :data:`MAX_COUNT`."""
    try:
        value = operator.index(n)
    except TypeError:
        whole = isinstance(n, float) and n.is_integer()
        if whole or (isinstance(n, str) and n.strip().lstrip("+-").isdigit()):
            value = int(n)
        else:
            raise TypeError(f"{what}: n must be a whole number of steps, got {n!r}") from None
    if value < 0:
        raise ValueError(f"{what}: n must be >= 0, got {value} (progress only moves forward)")
    if value > MAX_COUNT:
        raise ValueError(f"{what}: n must be at most {MAX_COUNT}, the largest count the database stores; got {value}")
    return value


def _message_limit(value: Any) -> int:
    try:
        return min(max(int(value), 1), MESSAGE_COLUMN_LENGTH)
    except (TypeError, ValueError):
        return MESSAGE_COLUMN_LENGTH


def current_task() -> TaskContext | None:
    """The :class:`TaskContext` of the user task running in this thread, or ``None``."""
    return _current.get()


# ``(user, enclosing node)`` of the innermost ``on_behalf_of`` block, ``None`` outside any: a
# block's exit restores the enclosing value of the context it runs in, so one instance may be
# entered by several threads or coroutines at once.
_acting_for: ContextVar[tuple[Any, Any] | None] = ContextVar("usertasks_on_behalf_of", default=None)


class on_behalf_of:  # (lower case: used like a function, ``with usertasks.on_behalf_of(user):``)
    """Tie the tasks enqueued through Django's task API (``usertasks.backends``) to ``user``.

    A context manager (``with on_behalf_of(request.user): export.enqueue(...)``) and a decorator
    of plain and ``async`` functions.  The user is held in a ``ContextVar``: it applies to the
    code inside the block and what it awaits, never to other threads or other requests.
    ``on_behalf_of(None)`` enqueues tasks tracked without a user (only superusers see them)."""

    def __init__(self, user: Any) -> None:
        if user is not None and (not getattr(user, "is_authenticated", False) or getattr(user, "pk", None) is None):
            raise ValueError("on_behalf_of() needs a saved, authenticated user (or None)")
        self.user = user

    def __enter__(self) -> Any:
        _acting_for.set((self.user, _acting_for.get()))
        return self.user

    def __exit__(self, *exc_info: Any) -> None:
        node = _acting_for.get()
        _acting_for.set(None if node is None else node[1])

    def __call__(self, func: Any) -> Any:
        user = self.user
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with on_behalf_of(user):
                    return await func(*args, **kwargs)

            return run_async

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with on_behalf_of(user):
                return func(*args, **kwargs)

        return run


def acting_for() -> tuple[bool, Any]:
    """``(True, user)`` inside :class:`on_behalf_of` (``user`` may be ``None``), else
    ``(False, None)``."""
    node = _acting_for.get()
    return (False, None) if node is None else (True, node[0])


class TaskContext:
    """Progress, cancel and artifacts of one run (one attempt) of a user task.

    Attributes:
      status_id: primary key of the :class:`~usertasks.models.UserTaskStatus` row, ``None`` when
        the task was sent without a user (untracked).
      message_id: the Dramatiq message id (``status.task_id``).
      attempt: 1 for the first run, 2 after one retry, ...
    """

    def __init__(
        self,
        *,
        status_id: int | None,
        message_id: str | None,
        actor_name: str,
        attempt: int = 1,
        total_steps: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.status_id = status_id
        self.message_id = message_id
        self.actor_name = actor_name
        self.attempt = attempt
        self.options = options or {}
        self.thread_id = threading.get_ident()
        self.worker = _run_token()
        self.started_at = time.time()
        self.completed = 0
        self.total: int | None = None if total_steps is None else int(total_steps)
        self.message: str | None = None
        self.dirty = False
        self._abort = False
        self.cancel_seen_at: float | None = None
        self.forced = False
        self._status: UserTaskStatus | None = None
        # Set while the task body runs (by the actor wrapper); a forced abort is only ever
        # raised inside the body, under this lock (see ``usertasks.middleware.abort``).
        self.in_body = False
        self.body_lock = threading.Lock()
        # Worker-side bookkeeping of the run, set by the middleware and the writer.
        self.broker_message: Any = None  # the Dramatiq MessageProxy of this run
        self.parent_id: int | None = None  # container of a fan-out child or pipeline stage
        self.quiet = False  # a fan-out child whose ordinary start and success leave no event
        self.fanout = False  # this run made its task a container (usertasks.fanout)
        self.fanout_calls = 0
        self.wait_for_start = True  # the body waits until its start is stored
        self.start_op: Any = None  # the writer's change storing this run's start (usertasks.transitions)
        self.started_written = False  # that op has committed
        self.row_gone = False  # the start found the row final or missing
        self.ended = False  # the end of the run has been stored (see UserTaskTracking)
        # Outcome counters (``count()``), and what the writer has stored of them and of this
        # run's steps (``usertasks.transitions``): the row's counters before this run, and what
        # this run has added to its container so far.
        self.counts: dict[str, int] = {}
        self.counts_base: dict[str, int] | None = None
        self.counts_stored: dict[str, int] = {}  # of ``counts``, in the task's own row
        self.counts_reported: dict[str, int] = {}  # of ``counts``, added to the container
        self.share_reported: tuple[int, int] = (0, 0)  # steps added to the container
        self.planned: tuple[int, int | None, dict[str, int]] | None = None  # the write being made

    @property
    def tracked(self) -> bool:
        return self.status_id is not None

    # -- progress -----------------------------------------------------------------------------

    def set_total_steps(self, n: int) -> None:
        """Set how many steps the task will take (the 100 % mark): a whole number from 0 to
        2**63 - 1 (what the database stores); anything else raises ``ValueError`` (``TypeError``
        for a value that is not a number) here, in the task."""
        self.total = _count(n, "set_total_steps(n)")
        self.dirty = True

    def step(self, n: int = 1, message: str | None = None) -> None:
        """Count ``n`` more steps done (a whole number >= 0), optionally with a new message;
        raises :class:`~usertasks.Aborted` once a cancel has been requested.  Costs no I/O.

        Progress only moves forward: a negative ``n``, or one that takes the count past
        2**63 - 1, raises ``ValueError`` here and leaves the count as it was."""
        if n.__class__ is not int or n < 0:
            n = _count(n, "step(n)")
        completed = self.completed + n
        if completed > MAX_COUNT:
            raise ValueError(
                f"step({n}): the count of steps done would pass {MAX_COUNT}, the largest the database stores"
            )
        self.completed = completed
        if message is not None:
            self.message = message  # made storable once per write, in snapshot()
        self.dirty = True
        if self._abort:
            raise Aborted()

    def set_message(self, text: str | None) -> None:
        """Show ``text`` as the task's current activity (cut to ``MESSAGE_MAX_LENGTH``
        characters with an ellipsis)."""
        self.message = "" if text is None else text
        self.dirty = True

    def snapshot(self) -> tuple[int, int | None, str | None]:
        """``(completed, total, message)`` as it should be stored; clears the dirty mark."""
        from .conf import app_settings

        self.dirty = False
        message = self.message
        if message is not None:  # cut, then without what no database stores (see sql.storable)
            message = storable(clip(message, _message_limit(app_settings.MESSAGE_MAX_LENGTH)))
        completed, total = self.completed, self.total
        if not 0 <= completed <= MAX_COUNT:  # assigned by hand: store what the column can hold
            completed = min(max(int(completed), 0), MAX_COUNT)
        if total is not None and not 0 <= total <= MAX_COUNT:
            total = min(max(int(total), 0), MAX_COUNT)
        return completed, total, message

    def count(self, **counters: int) -> None:
        """Add to the task's outcome counters (``task.count(succeeded=48, failed=1, skipped=1)``;
        the names are free, the values non-negative integers).  They are stored with the
        progress (no I/O here), kept across retries, shown on the status page and summed into
        the task's container (``status.counts``).  See ``docs/api.md``."""
        for name, n in counters.items():
            if not name or len(name) > MAX_COUNTER_NAME:
                raise ValueError(f"counter names are 1 to {MAX_COUNTER_NAME} characters long: {name!r}")
            if type(n) is not int or n < 0:  # bool is an int, and never meant as a count
                raise ValueError(f"count({name}=...) takes a non-negative integer, not {n!r}")
        counts = self.counts
        for name, n in counters.items():
            counts[name] = counts.get(name, 0) + n
        self.dirty = True

    # -- cancel -------------------------------------------------------------------------------

    @property
    def abort_requested(self) -> bool:
        """``True`` once someone asked to cancel this task."""
        return self._abort

    def check_abort(self) -> None:
        """Raise :class:`~usertasks.Aborted` if a cancel has been requested."""
        if self._abort:
            raise Aborted()

    @property
    def abort_grace(self) -> float:
        """Seconds from a cancel to a forced interrupt (task option, else ``ABORT_GRACE``)."""
        from .conf import app_settings

        grace = self.options.get("abort_grace")
        return float(app_settings.ABORT_GRACE if grace is None else grace)

    def request_abort(self) -> None:
        """Mark this run as canceled (called by the abort poller)."""
        if not self._abort:
            self._abort = True
            self.cancel_seen_at = time.monotonic()

    # -- fan-out ------------------------------------------------------------------------------

    def fan_out(
        self,
        child_actor: Any,
        items: Iterable[tuple[Any, ...] | list[Any] | dict[str, Any]],
        *,
        policy: str = "allow_failures",
        on_complete: Any = None,
    ) -> QuerySet[UserTaskStatus]:
        """Start one ``child_actor`` task per item (a tuple of positional arguments or a dict of
        keyword arguments) and make this task their container: it shows their aggregate
        progress and ends when its last child ends, after this body has returned.

        ``policy``: ``"allow_failures"`` (end Succeeded, failures counted and listed) or
        ``"fail_fast"`` (the first failure cancels the rest; end Failed).  ``on_complete``: an
        actor (sent with the container's UUID) or a message, sent once when the container ends.
        Returns the children as a QuerySet.  See ``docs/fanout.md``."""
        from .containers.start import fan_out

        return fan_out(self, child_actor, items, policy=policy, on_complete=on_complete)

    # -- outputs ------------------------------------------------------------------------------

    def add_artifact(
        self, name: str, *, file: Any = None, url: str | None = None, text: str | None = None
    ) -> UserTaskArtifact | None:
        """Attach an output to the task: exactly one of a ``File`` (stored in the artifact
        storage), a ``url`` or a ``text``.  Returns the :class:`~usertasks.models.UserTaskArtifact`;
        ``None`` for an untracked task."""
        given = [v is not None for v in (file, url, text)]
        if sum(given) != 1:
            raise ValueError("add_artifact() takes exactly one of file=, url= or text=")
        if not self.tracked:
            return None
        from .artifacts import create_artifact

        return create_artifact(self.status_id, name, file=file, url=url, text=text)

    @property
    def status(self) -> UserTaskStatus | None:
        """The :class:`~usertasks.models.UserTaskStatus` row (read from the database once per run;
        call ``status.refresh_from_db()`` for fresh values).  ``None`` when untracked."""
        if self._status is None and self.tracked:
            from .models import UserTaskStatus

            status = UserTaskStatus.objects.get(pk=int(self.status_id or 0))
            start = getattr(self, "start_op", None)
            if start is not None:
                # The writer holds this run's start until its next tick (or the run's end): show
                # the row as that start makes it, rather than wait for it.
                from .transitions import as_started

                as_started(status, self, start.at)
            self._status = status
        return self._status

    def __repr__(self) -> str:
        return f"<TaskContext {self.actor_name} status={self.status_id} {self.completed}/{self.total}>"
