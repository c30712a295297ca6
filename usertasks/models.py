"""Task status rows, their artifacts and their event history.

Field names include those of django-user-tasks (``uuid, user, task_id, parent, is_container,
task_class, name, state, completed_steps, total_steps, attempts, created, modified``) so one
table serves Dramatiq tasks and tasks started through the Celery compatibility layer.
"""

import os
import threading
import uuid as uuid_lib
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import Storage
from django.db import models, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from django.utils.text import get_valid_filename
from django.utils.translation import gettext_lazy as _

from . import operations
from .conf import app_settings
from .protocol import PIPELINE_CLASS, WAITING
from .states import FINAL_STATES, NOT_RUNNING, State, effective
from .states import is_active as state_is_active
from .storage import delete_files_on_commit

__all__ = ["State", "UserTaskArtifact", "UserTaskEvent", "UserTaskNotification", "UserTaskStatus", "artifact_storage"]


class UserTaskStatusQuerySet(models.QuerySet):
    def for_user(self, user):
        """Tasks ``user`` started (top-level ones: fan-out children are hidden)."""
        return self.filter(user=user, parent__isnull=True)

    def visible_to(self, user):
        """Tasks ``user`` may see under the default access policy: their own, or all of them for
        a superuser; none for an anonymous or inactive user."""
        if user is None or not user.is_authenticated or not user.is_active:
            return self.none()
        return self if user.is_superuser else self.filter(user=user)

    def top_level(self):
        """Without fan-out children (the dashboard lists these)."""
        return self.filter(parent__isnull=True)

    def failed(self):
        return self.filter(state=State.FAILED)

    def canceled(self):
        return self.filter(state=State.CANCELED)

    def filter_by(self, name):
        """Dashboard/API filters: ``active``, ``finished``, ``failed``, ``canceled`` (else all)."""
        method = {
            "active": self.active,
            "finished": self.finished,
            "failed": self.failed,
            "canceled": self.canceled,
        }.get(name or "")
        return method() if method else self

    def active(self):
        """Pending, running (custom states included) or retrying."""
        return self.exclude(state__in=FINAL_STATES)

    def finished(self):
        return self.filter(state__in=FINAL_STATES)

    def stale(self, now=None):
        """In Progress tasks (custom states included) whose worker has not reported within
        ``STALE_AFTER``."""
        now = now or timezone.now()
        cutoff = now - timedelta(seconds=app_settings.STALE_AFTER)
        return (
            self.exclude(state__in=NOT_RUNNING)
            .filter(Q(heartbeat__lt=cutoff) | Q(heartbeat__isnull=True, modified__lt=cutoff))
            .exclude(self._waiting_containers())
        )

    @staticmethod
    def _waiting_containers():
        # Fan-outs whose body returned, and pipelines: no worker runs them, their children do.
        return Q(is_container=True, worker=WAITING)

    def waiting_containers(self):
        """Containers (fan-outs, pipelines) that wait for their children: In Progress with no
        run of their own, so no heartbeat."""
        return self.filter(state=State.IN_PROGRESS).filter(self._waiting_containers())

    def waiting_stages(self):
        """Pipeline stages that wait for the stage before them: Pending, but no message has been
        sent for them yet (the reaper must not take them for lost messages)."""
        return self.filter(state=State.PENDING, parent__isnull=False, options__waiting=True)

    def expired(self, now=None):
        """Finished tasks older than ``MAX_AGE`` counted from when they finished (from their
        last change, ``modified``, when they have no ``finished`` time)."""
        cutoff = (now or timezone.now()) - app_settings.MAX_AGE
        return self.finished().filter(Q(finished__lt=cutoff) | Q(finished__isnull=True, modified__lt=cutoff))


class UserTaskStatus(models.Model):
    """One user-visible task: its state, progress, outcome and who asked for it."""

    State = State

    id = models.BigAutoField(primary_key=True)
    uuid = models.UUIDField(default=uuid_lib.uuid4, unique=True, editable=False, verbose_name=_("UUID"))
    # Indexed by ``usertasks_user_created`` (user first), so no index of its own.
    # Null for a task started through Django's task API outside ``usertasks.on_behalf_of()``:
    # only superusers see it.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        # No user: a task started through Django's task API outside ``on_behalf_of()``.
        null=True,
        blank=True,
        # The names django-user-tasks' model gave them (``user.usertaskstatus_set``,
        # ``User.objects.filter(usertaskstatus__state=...)``); the compatibility layer's.
        related_name="usertaskstatus_set",
        related_query_name="usertaskstatus",
        verbose_name=_("user"),
        db_index=False,
    )
    task_id = models.CharField(
        max_length=128,
        verbose_name=_("task ID"),
        help_text=_("Message id of the Dramatiq message (or Celery task id)."),
    )
    parent = models.ForeignKey(
        "self",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="children",
        verbose_name=_("parent"),
        db_index=False,  # partial index below: most tasks have none
    )
    is_container = models.BooleanField(default=False, verbose_name=_("container"))
    task_class = models.CharField(
        max_length=128, verbose_name=_("task class"), help_text=_("Actor name or Celery task class path.")
    )
    name = models.CharField(max_length=255, verbose_name=_("name"))
    state = models.CharField(max_length=128, choices=State.choices, default=State.PENDING, verbose_name=_("state"))
    completed_steps = models.PositiveBigIntegerField(default=0, verbose_name=_("completed steps"))
    total_steps = models.PositiveBigIntegerField(default=0, verbose_name=_("total steps"))
    attempts = models.PositiveIntegerField(default=0, verbose_name=_("attempts"))
    message = models.CharField(max_length=1000, blank=True, default="", verbose_name=_("message"))
    backend = models.CharField(max_length=16, default="dramatiq", verbose_name=_("backend"))
    queue_name = models.CharField(max_length=128, blank=True, default="", verbose_name=_("queue"))

    # Outcome: ``error`` is shown to the user, ``traceback`` only to staff.
    error = models.TextField(blank=True, default="", verbose_name=_("error"))
    error_class = models.CharField(max_length=255, blank=True, default="", verbose_name=_("error class"))
    traceback = models.TextField(blank=True, default="", verbose_name=_("traceback"))
    # What the body of a task started through Django's task API returned (JSON).
    return_value = models.JSONField(null=True, blank=True, verbose_name=_("return value"))

    created = models.DateTimeField(default=timezone.now, editable=False, verbose_name=_("created"))
    modified = models.DateTimeField(auto_now=True, verbose_name=_("modified"))
    eta = models.DateTimeField(null=True, blank=True, verbose_name=_("due"), help_text=_("When a delayed task is due."))
    started = models.DateTimeField(null=True, blank=True, verbose_name=_("started"))
    finished = models.DateTimeField(null=True, blank=True, verbose_name=_("finished"))

    # Which worker runs the current attempt, and when it last reported.
    worker = models.CharField(max_length=255, blank=True, default="", verbose_name=_("worker"))
    heartbeat = models.DateTimeField(null=True, blank=True, verbose_name=_("heartbeat"))

    # Cancel bookkeeping.
    cancel_requested = models.DateTimeField(null=True, blank=True, verbose_name=_("cancel requested"))
    canceled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("canceled by"),
        db_index=False,  # partial index below
    )

    # Dedupe: set while the task is active, cleared once it is final.  A unique constraint (NULLs
    # do not collide) makes the database the arbiter between concurrent identical requests.
    unique_key = models.CharField(max_length=255, null=True, blank=True, verbose_name=_("unique key"))  # noqa: DJ001

    # Fan-out / pipeline aggregate counters (containers only).
    children_total = models.PositiveBigIntegerField(default=0)
    children_succeeded = models.PositiveBigIntegerField(default=0)
    children_failed = models.PositiveBigIntegerField(default=0)
    children_canceled = models.PositiveBigIntegerField(default=0)
    children_skipped = models.PositiveBigIntegerField(default=0)
    children_retried = models.PositiveBigIntegerField(default=0)

    # Outcome counters (``task.count(succeeded=..., failed=..., skipped=...)``): name -> int.  A
    # container's are the sums of its children's.
    counts = models.JSONField(default=dict, blank=True, verbose_name=_("counts"))

    # Per-task options (notify, abort_grace, fan-out policy and callback, ...).
    options = models.JSONField(default=dict, blank=True, verbose_name=_("options"))

    # The task's input, ``{"args": [...], "kwargs": {...}}`` (NULL when it was not stored: Celery
    # tasks, rows older than the field).  An actor's ``sensitive`` arguments are never stored:
    # their names are listed under ``"omitted"`` instead, and such a task cannot be run again.
    arguments = models.JSONField(null=True, blank=True, verbose_name=_("arguments"))
    # The task this one runs again (``status.rerun()``).
    rerun_of = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="reruns",
        verbose_name=_("run again from"),
        db_index=False,  # partial index below: most tasks are not re-runs
    )

    objects = UserTaskStatusQuerySet.as_manager()

    #: Set by :meth:`cancel`: what the cancel did (``usertasks.cancel``: "canceled", "requested"
    #: or "already_final").
    cancel_outcome: str

    class Meta:
        verbose_name = _("user task status")
        verbose_name_plural = _("user task statuses")
        ordering = ("-created", "-id")
        indexes = [
            models.Index(fields=["user", "-created"], name="usertasks_user_created"),
            models.Index(
                fields=["state", "modified"],
                name="usertasks_active",
                condition=Q(state__in=["Pending", "In Progress", "Retrying"]),
            ),
            models.Index(fields=["state", "finished"], name="usertasks_finished"),
            # Most tasks have neither a container nor a canceler: their NULLs are left out.
            models.Index(fields=["parent"], name="usertasks_parent", condition=Q(parent__isnull=False)),
            models.Index(fields=["canceled_by"], name="usertasks_canceled_by", condition=Q(canceled_by__isnull=False)),
            models.Index(fields=["rerun_of"], name="usertasks_rerun_of", condition=Q(rerun_of__isnull=False)),
        ]
        # Constraints rather than ``unique=True``: on PostgreSQL the latter adds a second,
        # ``LIKE``-pattern index to each column, which nothing here queries and every write
        # of a row pays for.
        constraints = [
            models.UniqueConstraint(fields=["task_id"], name="usertasks_task_id_unique"),
            models.UniqueConstraint(fields=["unique_key"], name="usertasks_unique_key"),
        ]

    def __str__(self):
        return f"{self.name} ({self.state})"

    def get_absolute_url(self):
        return reverse("usertasks:status", args=[self.uuid])

    # -- derived values -----------------------------------------------------------------------

    @property
    def effective_state(self):
        """``state``, or In Progress for a custom state (see :data:`usertasks.states.STANDARD_STATES`)."""
        return effective(self.state)

    @property
    def is_active(self):
        return state_is_active(self.state)

    @property
    def is_final(self):
        return self.state in FINAL_STATES

    @property
    def state_text(self):
        return State(effective(self.state)).label

    @property
    def percent(self):
        """Progress in percent (0-100), or ``None`` when the total is unknown."""
        if self.state == State.SUCCEEDED:
            return 100.0
        if not self.total_steps:
            return None
        return min(100.0, 100.0 * self.completed_steps / self.total_steps)

    @property
    def elapsed(self):
        if not self.started:
            return None
        return (self.finished or timezone.now()) - self.started

    @property
    def eta_remaining(self):
        """Estimated time left, extrapolated from the rate so far; ``None`` when unknown."""
        if self.effective_state != State.IN_PROGRESS or not self.started or not self.total_steps:
            return None
        done = self.completed_steps
        if done <= 0:
            return None
        elapsed = (timezone.now() - self.started).total_seconds()
        remaining = max(0, self.total_steps - done)
        return timedelta(seconds=elapsed * remaining / done)

    # -- operations ---------------------------------------------------------------------------

    def cancel(self, by=None):
        """Cancel this task; returns ``True`` when the cancel took effect, ``False`` when the
        task had already finished.  ``self`` is refreshed, and ``self.cancel_outcome`` tells
        what happened (``usertasks.cancel``).  See ``docs/cancel.md``."""
        return operations.get("cancel")(self, by=by)

    @property
    def is_rerunnable(self):
        """Whether :meth:`rerun` can be asked of this task as stored: finished, a Dramatiq task
        (not a pipeline), its input stored whole.  Whether its actor still exists and the
        arguments still fit is checked by :meth:`rerun` itself."""
        arguments = self.arguments
        return (
            self.is_final
            and self.backend == "dramatiq"
            and self.task_class != PIPELINE_CLASS
            and isinstance(arguments, dict)
            and isinstance(arguments.get("args"), list)
            and isinstance(arguments.get("kwargs"), dict)
            and not arguments.get("omitted")
        )

    def rerun(self, by=None):
        """Start a new task with this finished task's actor, arguments and owner; returns the
        new row (its ``rerun_of`` is this task), or, for a unique task identical to an active
        one, that active task.  Records a ``rerun`` event here (``actor``: ``by``).  Raises
        :class:`~usertasks.exceptions.RerunError`, having written nothing, when the task has not
        finished, its input was not stored, its actor is gone or its arguments no longer fit
        (``docs/web.md``)."""
        return operations.get("rerun")(self, by=by)

    # -- fan-out and pipelines ----------------------------------------------------------------

    @property
    def is_pipeline(self):
        return self.is_container and "pipeline" in (self.options or {})

    @property
    def children_done(self):
        """Children (subtasks or stages) that have ended, whatever the outcome."""
        return self.children_succeeded + self.children_failed + self.children_canceled + self.children_skipped

    @property
    def children_active(self):
        """Children that have not ended yet."""
        return max(0, self.children_total - self.children_done)

    @property
    def fanout_policy(self):
        """``"allow_failures"`` or ``"fail_fast"`` for a fan-out, else ``None``."""
        return ((self.options or {}).get("fanout") or {}).get("policy")

    def failed_children(self):
        """The children that failed, first failure first (``name``, ``error``, ``finished``, ...):
        what the status page of a container lists."""
        return self.children.filter(state=State.FAILED).order_by("finished", "pk")

    def stages(self):
        """The stages of a pipeline, in order (for any container: its children by creation)."""
        return self.children.order_by("pk")

    def delete_with_files(self):
        """Delete this finished task, its children, artifacts and events; the stored files go
        once the transaction commits.  Returns ``False`` (and deletes nothing) while the task is
        still active."""
        with transaction.atomic():
            row = type(self).objects.select_for_update().filter(pk=self.pk).first()
            if row is None:
                return True
            if row.state not in FINAL_STATES:
                return False
            ids = [row.pk]
            frontier = [row.pk]
            while frontier:
                frontier = list(type(self).objects.filter(parent_id__in=frontier).values_list("pk", flat=True))
                ids.extend(frontier)
            storage = artifact_storage()
            files = [
                (storage, name)
                for name in UserTaskArtifact.objects.filter(status_id__in=ids)
                .exclude(file="")
                .values_list("file", flat=True)
            ]
            type(self).objects.filter(pk=row.pk).delete()
            delete_files_on_commit(files)
        return True

    def refresh(self):
        self.refresh_from_db()
        return self


def artifact_upload_to(instance, filename):
    """``usertasks/<task uuid>/<artifact uuid>/<safe file name>``: no path from the task survives."""
    try:
        base = get_valid_filename(os.path.basename(filename.replace("\\", "/")))
    except SuspiciousFileOperation:  # "", ".", "..", or nothing left once cleaned
        base = "artifact"
    return f"usertasks/{instance.status.uuid}/{instance.uuid}/{base}"


class ArtifactStorage(Storage):
    """Delegates to the storage named by ``USERTASKS["ARTIFACT_STORAGE"]``, resolved on each call."""

    @staticmethod
    def resolve():
        from django.core.files.storage import storages
        from django.utils.module_loading import import_string

        name = app_settings.ARTIFACT_STORAGE
        if "." in name:
            return import_string(name)()
        return storages[name]

    def deconstruct(self):
        return ("usertasks.models.ArtifactStorage", (), {})

    def __eq__(self, other):
        return isinstance(other, ArtifactStorage)

    def __hash__(self):
        return hash(ArtifactStorage)


def _delegate(name):
    def method(self, *args, **kwargs):
        return getattr(self.resolve(), name)(*args, **kwargs)

    method.__name__ = name
    return method


for _name in (
    "open",
    "save",
    "get_valid_name",
    "get_alternative_name",
    "get_available_name",
    "generate_filename",
    "path",
    "delete",
    "exists",
    "listdir",
    "size",
    "url",
    "get_accessed_time",
    "get_created_time",
    "get_modified_time",
):
    setattr(ArtifactStorage, _name, _delegate(_name))


def artifact_storage():
    return ArtifactStorage()


class UserTaskArtifact(models.Model):
    """An output of a task: a stored file, a URL or a text."""

    id = models.BigAutoField(primary_key=True)
    uuid = models.UUIDField(default=uuid_lib.uuid4, unique=True, editable=False, verbose_name=_("UUID"))
    status = models.ForeignKey(
        UserTaskStatus, on_delete=models.CASCADE, related_name="artifacts", verbose_name=_("task")
    )
    name = models.CharField(max_length=255, blank=True, default="", verbose_name=_("name"))
    file = models.FileField(
        upload_to=artifact_upload_to, storage=artifact_storage, max_length=512, blank=True, verbose_name=_("file")
    )
    url = models.URLField(max_length=2048, blank=True, default="", verbose_name=_("URL"))
    text = models.TextField(blank=True, default="", verbose_name=_("text"))
    created = models.DateTimeField(default=timezone.now, editable=False, verbose_name=_("created"))
    modified = models.DateTimeField(auto_now=True, verbose_name=_("modified"))

    class Meta:
        verbose_name = _("user task artifact")
        verbose_name_plural = _("user task artifacts")
        ordering = ("created", "id")

    def __str__(self):
        return self.name or str(self.uuid)

    def get_absolute_url(self):
        return reverse("usertasks:artifact", args=[self.uuid])

    @property
    def kind(self):
        if self.file:
            return "file"
        if self.url:
            return "url"
        return "text"


class EventKind(models.TextChoices):
    ENQUEUED = "enqueued", _("Enqueued")
    STARTED = "started", _("Started")
    RETRYING = "retrying", _("Retrying")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")
    CANCEL_REQUESTED = "cancel_requested", _("Cancel requested")
    CANCELED = "canceled", _("Canceled")
    TIMED_OUT = "timed_out", _("Timed out")
    REQUEUED = "requeued", _("Requeued")
    WORKER_LOST = "worker_lost", _("Worker lost")
    NEVER_STARTED = "never_started", _("Never started")
    SKIPPED = "skipped", _("Skipped")
    NOTE = "note", _("Note")
    RERUN = "rerun", _("Run again")
    NOTIFIED = "notified", _("Notified")
    NOTIFICATION_FAILED = "notification_failed", _("Notification failed")


class UserTaskEvent(models.Model):
    """One entry of a task's append-only history."""

    Kind = EventKind

    id = models.BigAutoField(primary_key=True)
    status = models.ForeignKey(UserTaskStatus, on_delete=models.CASCADE, related_name="events", verbose_name=_("task"))
    kind = models.CharField(max_length=32, choices=EventKind.choices, verbose_name=_("kind"))
    created = models.DateTimeField(default=timezone.now, verbose_name=_("time"))
    attempt = models.PositiveIntegerField(default=0, verbose_name=_("attempt"))
    detail = models.TextField(blank=True, default="", verbose_name=_("detail"))
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("by"),
        db_index=False,  # partial index below: most events have none
    )

    class Meta:
        verbose_name = _("user task event")
        verbose_name_plural = _("user task events")
        ordering = ("created", "id")
        indexes = [
            models.Index(fields=["actor"], name="usertasks_event_actor", condition=Q(actor__isnull=False)),
        ]

    def __str__(self):
        return f"{self.get_kind_display()} @ {self.created:%Y-%m-%d %H:%M:%S}"

    def save(self, *args, **kwargs):
        if self.pk is not None and not kwargs.get("force_insert"):
            raise ValueError("Task events are append-only.")
        super().save(*args, **kwargs)

    @classmethod
    def of_run(cls, status_id, kind, attempt=0, detail=""):
        """An unsaved event of a run, built with positional arguments (in the order of the
        fields above): half the cost of keyword ones, for the two events every run writes."""
        return cls(None, status_id, kind, timezone.now(), attempt, detail, None)  # type: ignore[misc]


def notify_states_for(value):
    """The final states that notify, for a task's ``notify`` option (``None``: the setting
    ``USERTASKS["NOTIFY"]``)."""
    if value is None:
        value = app_settings.NOTIFY
    if value is True:
        return set(FINAL_STATES)
    if not value:
        return set()
    if isinstance(value, str):
        value = [value]
    return {State(v) for v in value if v in State.values}


#: ``notify`` given to :meth:`UserTaskNotificationQuerySet.record` when the caller does not know
#: the task's option: it is read from the rows.
FROM_ROW = object()


class UserTaskNotificationQuerySet(models.QuerySet):
    def record(self, entries):
        """In the current transaction (the one that makes the tasks final): one row per task
        and channel of ``USERTASKS["NOTIFIERS"]`` for each ``(status_id, state, notify)`` of
        ``entries`` whose outcome notifies (``notify``: the task's option, or :data:`FROM_ROW`).
        Only top-level tasks are given (children never notify).  A row already recorded for a
        task and channel is kept as it is.  Returns how many entries notify."""
        channels = list(app_settings.NOTIFIERS or ())
        if not channels or not entries:
            return 0
        unknown = [pk for pk, _state, notify in entries if notify is FROM_ROW]
        options = {}
        if unknown:
            options = dict(UserTaskStatus.objects.using(self.db).filter(pk__in=unknown).values_list("pk", "options"))
        now = timezone.now()
        rows: list[UserTaskNotification] = []
        for pk, state, notify in entries:
            if notify is FROM_ROW:
                notify = (options.get(pk) or {}).get("notify")
            if state in notify_states_for(notify):
                rows.extend(
                    UserTaskNotification(status_id=pk, channel=c, state=state, created=now, due=now) for c in channels
                )
        if rows:
            self.bulk_create(rows, ignore_conflicts=True)  # type: ignore[arg-type]
            transaction.on_commit(UserTaskNotification.recorded.set, using=self.db)
        return len(rows) // len(channels)

    def due(self, now=None):
        """Rows to deliver now: not delivered, not given up, due, and not claimed by a
        deliverer (or its claim has lapsed)."""
        now = now or timezone.now()
        return self.filter(sent__isnull=True, due__lte=now).filter(
            Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
        )


class UserTaskNotification(models.Model):
    """The outbox of notifications: one row per finished task and channel, recorded in the
    transaction that stored the final state and delivered afterwards by a deliverer
    (``usertasks.notify``), so a notification survives a worker that dies after the commit.

    ``status`` has no database constraint (the purge deletes rows in bulk); a row whose task is
    gone is dropped by the deliverer."""

    id = models.BigAutoField(primary_key=True)
    status = models.ForeignKey(
        UserTaskStatus,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="notifications",
        verbose_name=_("task"),
    )
    #: Dotted path of the channel class (an entry of ``USERTASKS["NOTIFIERS"]``).
    channel = models.CharField(max_length=255, verbose_name=_("channel"))
    #: The final state the task entered.
    state = models.CharField(max_length=20, choices=State.choices, verbose_name=_("state"))
    created = models.DateTimeField(default=timezone.now, verbose_name=_("created"))
    #: When the next delivery attempt is due; ``None`` once given up.
    due = models.DateTimeField(null=True, blank=True, verbose_name=_("due"))
    sent = models.DateTimeField(null=True, blank=True, verbose_name=_("sent"))
    attempts = models.PositiveIntegerField(default=0, verbose_name=_("attempts"))
    last_error = models.TextField(blank=True, default="", verbose_name=_("last error"))
    #: A deliverer's claim on the row: its token, until when it holds it.
    claim = models.CharField(max_length=32, blank=True, default="", verbose_name=_("claim"))
    claimed_until = models.DateTimeField(null=True, blank=True, verbose_name=_("claimed until"))

    objects = UserTaskNotificationQuerySet.as_manager()

    #: Set once a transaction that recorded notifications has committed (wakes the deliverer of
    #: this process).
    recorded = threading.Event()

    class Meta:
        verbose_name = _("user task notification")
        verbose_name_plural = _("user task notifications")
        constraints = [
            models.UniqueConstraint(fields=["status", "channel"], name="usertasks_notification_once"),
        ]
        indexes = [
            models.Index(fields=["sent", "due"], name="usertasks_notification_due"),
        ]

    def __str__(self):
        return f"{self.channel} for task {self.status_id} ({'sent' if self.sent else 'pending'})"
