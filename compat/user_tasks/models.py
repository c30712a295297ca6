"""``UserTaskStatus`` and ``UserTaskArtifact`` of django-user-tasks, as proxies of the usertasks models.

The rows are the usertasks rows (``usertasks_usertaskstatus`` and ``usertasks_usertaskartifact``):
a task started through Celery shows on the usertasks dashboard and status page like any other.
The methods keep the names and meaning of django-user-tasks 4.0; every state change is one of
``usertasks.transitions`` (a conditional UPDATE: a late or repeated call never moves a finished
task), is recorded in the task's event history, and final states send
``usertasks.signals.task_finished`` and ``user_tasks.user_task_stopped``.
"""

import logging
import threading
import uuid as uuid_lib
from contextlib import contextmanager

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from usertasks import models as core
from usertasks import runs, transitions
from usertasks.cancel import ALREADY_FINAL, CANCELED
from usertasks.states import FINAL_STATES, STANDARD_STATES, State

from .exceptions import TaskCanceledException

logger = logging.getLogger(__name__)
LOGGER = logger  # (django-user-tasks' name)

__all__ = ["UserTaskArtifact", "UserTaskStatus"]

_callers = threading.local()


@contextmanager
def _caller(instance):
    """While ``instance.cancel()`` runs: ``user_task_stopped`` sent meanwhile (under a
    ``TestCase``, or with no transaction around the cancel) carries ``instance`` itself, as
    django-user-tasks' ``cancel()`` does, not another copy of the row.  (Its other methods send
    a copy: django-user-tasks sent nothing from them.)"""
    by_pk = _callers.__dict__.setdefault("by_pk", {})
    previous = by_pk.get(instance.pk)
    by_pk[instance.pk] = instance
    try:
        yield
    finally:
        if previous is None:
            by_pk.pop(instance.pk, None)
        else:
            by_pk[instance.pk] = previous


def caller_instance(pk):
    """The instance whose method is changing task ``pk``'s state in this thread, if any."""
    return getattr(_callers, "by_pk", {}).get(pk)


#: ``task_class`` of the rows that stand for a Celery canvas.
GROUP, CHAIN, CHORD = "celery.group", "celery.chain", "celery.chord"


class UserTaskStatus(core.UserTaskStatus):
    """The status of a task run on behalf of a user (a proxy of ``usertasks.UserTaskStatus``).

    Call the methods outside of larger transactions: each one commits on its own.
    """

    PENDING = State.PENDING.value
    IN_PROGRESS = State.IN_PROGRESS.value
    SUCCEEDED = State.SUCCEEDED.value
    FAILED = State.FAILED.value
    CANCELED = State.CANCELED.value
    RETRYING = State.RETRYING.value

    STATE_TRANSLATIONS = {
        PENDING: _("Pending"),
        IN_PROGRESS: _("In Progress"),
        SUCCEEDED: _("Succeeded"),
        FAILED: _("Failed"),
        CANCELED: _("Canceled"),
        RETRYING: _("Retrying"),
    }

    class Meta:
        proxy = True
        app_label = "user_tasks"
        verbose_name = _("user task status")
        verbose_name_plural = _("user task statuses")
        # django-user-tasks checks ``user_tasks.cancel_usertaskstatus`` but never created it.
        permissions = [("cancel_usertaskstatus", "Can cancel user task status")]

    def __str__(self):
        return f"<UserTaskStatus: {self.name}>"

    def save(self, *args, **kwargs):
        if self._state.adding:
            if self.backend == "dramatiq":
                self.backend = "celery"
            if not self.task_id:
                self.task_id = str(uuid_lib.uuid4())
            if not self.attempts:  # django-user-tasks counts the first attempt from the start
                self.attempts = 1
            # No usertasks email unless the task class asks for one (``notify = True``).
            self.options = {"notify": False, **(self.options or {})}
        elif self.pk is not None and (kwargs.get("update_fields") is None or "state" in kwargs["update_fields"]):
            stored = UserTaskStatus.objects.filter(pk=self.pk).values_list("state", flat=True).first()
            if stored is not None and stored != self.state:
                # ``status.state = ...; status.save()``: the other fields are saved, the state
                # changes through the transition it names (its event, times and signals).
                target, self.state = self.state, stored
                if kwargs.get("update_fields") is not None:
                    kwargs["update_fields"] = [f for f in kwargs["update_fields"] if f != "state"]
                if kwargs.get("update_fields") != []:
                    super().save(*args, **kwargs)
                self._change_state(target)
                return
        super().save(*args, **kwargs)

    def _change_state(self, state):
        if state == State.CANCELED:
            self._finish(State.CANCELED, core.EventKind.CANCELED)
            self.refresh_from_db()
        elif state in STANDARD_STATES:
            self._set_standard_state(state)
        else:
            transitions.set_custom_state(self, state)
            self.refresh_from_db()

    # ``parent`` gives the proxy class (the foreign key on the concrete model gives the base).
    @property
    def parent(self):
        if self.parent_id is None:
            return None
        cached = self.__dict__.get("_compat_parent")
        if cached is None or cached.pk != self.parent_id:
            cached = UserTaskStatus.objects.get(pk=self.parent_id)
            self.__dict__["_compat_parent"] = cached
        return cached

    @parent.setter
    def parent(self, value):
        self.parent_id = None if value is None else value.pk
        self.__dict__["_compat_parent"] = value if isinstance(value, UserTaskStatus) else None

    # django-user-tasks' reverse accessors, giving this module's proxies.
    @property
    def artifacts(self):  # type: ignore[override]  # (the proxy's own reverse accessor)
        """This task's artifacts (``user_tasks.models.UserTaskArtifact``)."""
        return proxy_related_manager(self, core.UserTaskStatus.artifacts, UserTaskArtifact)

    @property
    def usertaskstatus_set(self):
        """The tasks of this group, chain or chord (``parent`` is this task)."""
        return proxy_related_manager(self, core.UserTaskStatus.children, UserTaskStatus)

    # -- helpers -------------------------------------------------------------------------------

    def _rows(self):
        return UserTaskStatus.objects.filter(pk=self.pk)

    def _cancel_requested(self):
        """Reload state and cancel bookkeeping; ``True`` once this task should stop.  The row
        decides (every cancel of a Celery task is written there first); a run this process
        registered also stops at its forced abort (``usertasks.runs``).  An abort flag in Redis
        alone is not enough: one raised in a transaction that was rolled back (a ``TestCase``)
        must not cancel the next task that gets the same primary key."""
        self.refresh_from_db(fields=["state", "cancel_requested", "completed_steps", "total_steps", "modified"])
        if self.is_container:
            return False
        if self.state == State.CANCELED or self.cancel_requested is not None:
            return True
        return runs.is_running(self.task_id) and runs.abort_requested(self, key=self.task_id)

    def _finish(self, state, kind, detail="", actor=None, notify_parent=True, where=None, **fields):
        """Enter a final state from an active one (``usertasks.transitions.finish``: its event,
        the container's counter, the signals); then let the container see whether it is done."""
        if not transitions.finish(self, state, kind, detail=detail, actor=actor, where=where, **fields):
            return False
        if notify_parent and self.parent_id and state != State.FAILED:  # fail() tells its parent
            self.parent._children_changed()
        return True

    def _children_changed(self):
        """A task of this container ended.  A chain or chord whose task failed or was canceled
        skips the tasks that can no longer run; once no task is active the container ends:
        Succeeded if all succeeded, else Failed (a task failed) or Canceled."""
        self.refresh_from_db(fields=["state"])
        if not self.is_active:
            return
        kids = UserTaskStatus.objects.filter(parent_id=self.pk)
        if self.task_class in (CHAIN, CHORD) and kids.filter(state__in=(State.FAILED, State.CANCELED)).exists():
            self._skip_pending_children()
        if kids.exclude(state__in=FINAL_STATES).exists():
            return
        if not kids.exclude(state=State.SUCCEEDED).exists():
            self.succeed()
        elif kids.filter(state=State.FAILED).exists():
            self.fail("A task of the group failed.")
        else:
            self._finish(State.CANCELED, core.EventKind.CANCELED, "A task of the group was canceled.")

    # -- the django-user-tasks API ------------------------------------------------------------

    @property
    def state_text(self):
        """The current state in the current language (a custom state set by :meth:`set_state`
        as it was given)."""
        return self.STATE_TRANSLATIONS.get(self.state, self.state)

    def start(self, worker=""):
        """Mark the task as running (and its containers).  Raises :class:`TaskCanceledException`
        if it was canceled before it started."""
        if self._cancel_requested():
            raise TaskCanceledException()
        transitions.begin(self, worker=worker, container=self.is_container)
        self.refresh_from_db()
        if self.state == State.CANCELED and not self.is_container:
            raise TaskCanceledException()
        if self.parent_id:
            parent = self.parent
            if parent.state in (State.PENDING, State.RETRYING):
                parent.start()

    def increment_completed_steps(self, steps=1):
        """Add ``steps`` to the completed steps (and to those of the containers), then raise
        :class:`TaskCanceledException` if a cancel has been requested."""
        now = timezone.now()
        update = {"completed_steps": F("completed_steps") + steps, "modified": now}
        if not self.is_container:
            update["heartbeat"] = now
        rows = self._rows().exclude(state__in=FINAL_STATES) if self.is_container else self._rows()
        counted = rows.update(**update)
        canceled = self._cancel_requested()
        if self.parent_id and counted:  # an ended container counted its steps when it succeeded
            self.parent.increment_completed_steps(steps)
        if canceled:
            raise TaskCanceledException()

    def increment_total_steps(self, steps):
        """Add ``steps`` to the total steps (and to those of the containers)."""
        self._rows().update(total_steps=F("total_steps") + steps, modified=timezone.now())
        self.refresh_from_db(fields=["total_steps", "modified"])
        if self.parent_id:
            self.parent.increment_total_steps(steps)

    def cancel(self, by=None):
        """Cancel the task (for a container: each of its tasks, then itself).  A pending task
        never runs; a running one stops at its next progress call.  Returns ``True`` when the
        cancel took effect; ``self.cancel_outcome`` tells how (see ``usertasks.cancel``)."""
        user = by if getattr(by, "pk", None) is not None and getattr(by, "is_authenticated", False) else None
        if self.is_container:
            done = self._finish(
                State.CANCELED,
                core.EventKind.CANCELED,
                actor=user,
                notify_parent=False,
                cancel_requested=timezone.now(),
                canceled_by=user,
            )
            for child in UserTaskStatus.objects.filter(parent_id=self.pk).exclude(state__in=FINAL_STATES):
                child.cancel(by=by)
            self.refresh_from_db()
            self.cancel_outcome = CANCELED if done else ALREADY_FINAL
            return done
        self.refresh_from_db(fields=["state"])
        was = self.state
        with _caller(self):
            done = super().cancel(by=by)  # usertasks.cancel.cancel_task: row, event, abort flag
        if self.cancel_outcome == CANCELED:
            if self.backend == "celery" and was in (State.PENDING, State.RETRYING):
                _revoke(self.task_id)
            # (usertasks' cancel_task sends task_finished, hence user_task_stopped, on commit)
            if self.parent_id:  # (cancel_task counted it on the container already)
                self.parent._children_changed()
        return done

    def fail(self, message, *, error_class="", traceback=""):
        """Mark the task as failed because of ``message``, shown to the user (also as the text
        of an artifact named ``Error``, as django-user-tasks does); then its containers."""
        message = str(message)
        with transaction.atomic():
            failed = self._finish(
                State.FAILED,
                core.EventKind.FAILED,
                message,
                error=message[:4000],
                error_class=error_class[:255],
                traceback=traceback,
            )
            if failed or self.is_container:
                UserTaskArtifact.objects.create(status=self, name="Error", text=message)
            if failed and self.is_container and self.task_class in (CHAIN, CHORD):
                self._skip_pending_children()
        if self.parent_id:
            self.parent.fail(message)

    def _skip_pending_children(self):
        """A failed chain or chord never runs its remaining tasks: end them Canceled."""
        for child in UserTaskStatus.objects.filter(parent_id=self.pk, state=State.PENDING, is_container=False):
            child._finish(
                State.CANCELED,
                core.EventKind.SKIPPED,
                "An earlier task of the group did not succeed.",
                notify_parent=False,
            )

    def retry(self, reason=""):
        """Record that this attempt failed and the task will run again."""
        if transitions.retrying(self, reason=reason):
            self.refresh_from_db()

    def set_name(self, name):
        """Name this task and its containers."""
        self._rows().update(name=str(name)[:255], modified=timezone.now())
        self.refresh_from_db(fields=["name", "modified"])
        if self.parent_id:
            self.parent.set_name(name)

    def set_state(self, custom_state):
        """Show a custom state, like "Updating" (raises :class:`TaskCanceledException` once
        canceled): ``state`` holds the text, which usertasks' pages, API, reaper and purge treat
        as In Progress.  It reaches the containers too, except a group's.  A standard state name
        makes that change instead: ``set_state("Succeeded")`` is :meth:`succeed`, ``"Failed"`` is
        :meth:`fail`, ``"Canceled"`` is :meth:`cancel`, ``"Retrying"`` is :meth:`retry`,
        ``"In Progress"`` is :meth:`start`."""
        custom_state = str(custom_state)
        if self._cancel_requested():
            raise TaskCanceledException()
        if custom_state in STANDARD_STATES:
            self._set_standard_state(custom_state)
            return
        transitions.set_custom_state(self, custom_state)
        self.refresh_from_db()
        if self.parent_id and self.parent.task_class != GROUP:
            self.parent.set_state(custom_state)

    def _set_standard_state(self, state):
        if state == State.SUCCEEDED:
            self.succeed()
        elif state == State.FAILED:
            self.fail(self.error or "The task failed.")
        elif state == State.CANCELED:
            self.cancel()
        elif state == State.RETRYING:
            self.retry()
        elif state == State.IN_PROGRESS:
            if self.state in (State.PENDING, State.RETRYING):
                self.start()
            elif self.state not in STANDARD_STATES:  # leave a custom state
                transitions.clear_custom_state(self)
                self.refresh_from_db()
        elif self.state != State.PENDING:
            raise ValueError("a task cannot go back to Pending")

    def succeed(self):
        """Mark the task as done (completing its steps); its container too once every task of
        it has succeeded."""
        for _try in range(50):
            self.refresh_from_db(fields=["completed_steps", "total_steps", "state"])
            if not self.is_active:
                return
            seen = self.completed_steps
            missing = max(0, self.total_steps - seen)
            # Only if no step landed since the read: otherwise the steps added to the containers
            # below would count that step a second time (it is on its way up already).
            done = self._finish(
                State.SUCCEEDED,
                core.EventKind.SUCCEEDED,
                notify_parent=False,
                where={"completed_steps": seen},
                completed_steps=Greatest(F("completed_steps"), F("total_steps")),
            )
            if done:
                break
        else:  # pragma: no cover - steps kept arriving
            return
        if not self.parent_id:
            return
        parent = self.parent
        if missing:
            parent._add_completed(missing)
        parent._children_changed()

    def _add_completed(self, steps):
        # A container that has ended already counted all its steps when it succeeded.
        n = (
            self._rows()
            .exclude(state__in=FINAL_STATES)
            .update(completed_steps=F("completed_steps") + steps, modified=timezone.now())
        )
        if n and self.parent_id:
            self.parent._add_completed(steps)


class UserTaskArtifact(core.UserTaskArtifact):
    """An output of a task: a file, a URL or a text (a proxy of ``usertasks.UserTaskArtifact``)."""

    class Meta:
        proxy = True
        app_label = "user_tasks"
        verbose_name = _("user task artifact")
        verbose_name_plural = _("user task artifacts")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not args and not kwargs.get("name"):  # a new artifact (rows loaded come positionally)
            self.name = "Output"

    def save(self, *args, **kwargs):
        if self._state.adding and not self.name:
            self.name = "Output"
        super().save(*args, **kwargs)

    def __str__(self):
        if self.file:
            content = self.file.name
        elif self.url:
            content = self.url
        elif len(self.text) > 50:
            content = self.text[:47] + "..."
        else:
            content = self.text
        return f"<UserTaskArtifact: ({self.name}) {content}>"


def _revoke(task_id):
    """Ask the running Celery workers to drop ``task_id`` (best effort: a worker that is not
    running now checks the row when it picks the task up)."""
    try:
        from celery import current_app

        if current_app.conf.task_always_eager:
            return
        current_app.control.revoke(task_id)
    except Exception:
        logger.warning("user_tasks: could not revoke Celery task %s", task_id, exc_info=True)


def proxy_related_manager(instance, descriptor, model):
    """The related manager of the reverse accessor ``descriptor`` for ``instance``, giving (and
    creating) instances of the proxy ``model``."""
    manager = descriptor.related_manager_cls(instance)
    manager.model = model
    return manager


class UserTasksOfUser:
    """``user.usertaskstatus_set`` as django-user-tasks had it: the user's tasks, as
    ``user_tasks.models.UserTaskStatus`` (set on the user model when the app is ready)."""

    def __init__(self, descriptor):
        self.descriptor = descriptor

    def __get__(self, user, owner=None):
        if user is None:
            return self
        return proxy_related_manager(user, self.descriptor, UserTaskStatus)
