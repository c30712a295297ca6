"""Expiry: delete finished tasks, their artifacts and the artifacts' stored files.

A task expires ``USERTASKS["MAX_AGE"]`` (default 30 days) after it *finished*.  :func:`purge`
walks the expired top-level tasks in primary-key order, ``PURGE_BATCH_SIZE`` at a time, one
short transaction per batch (no long lock, memory bounded by the batch size).  Children
(fan-out subtasks, pipeline stages, at any depth), events and artifacts go with their task; the
stored files are deleted once the transaction that deleted their rows has committed.

An active task is never deleted: the guard (final state, finished before the cutoff, no child
left) is part of the DELETE statement itself, not only of the query that picked the rows, and
a batch whose DELETE did not remove exactly the rows it picked is rolled back.

Entry points: ``manage.py usertasks_purge`` (``--dry-run``, ``--older-than``), the
``usertasks_purge`` actor, or :func:`purge` from your own code.  See ``docs/expiry.md``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

from django.db import OperationalError, router, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from .actors import maintenance_actor
from .states import FINAL_STATES
from .storage import delete_files_on_commit

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from .models import UserTaskStatus

#: An age: a ``timedelta``, seconds, or text like ``"30d"`` (:func:`parse_age`).
Age: TypeAlias = "timedelta | float | str"

logger = logging.getLogger("usertasks.purge")

#: Times a batch is tried again when another writer holds the database's lock.
LOCK_RETRIES = 8

__all__ = ["PurgeResult", "expired_tasks", "parse_age", "purge", "purge_expired_tasks"]


@dataclass
class PurgeResult:
    tasks: int = 0  # top-level tasks deleted (or that would be, with dry_run)
    children: int = 0  # their children (subtasks, stages)
    artifacts: int = 0
    files: int = 0  # stored files deleted (or that would be)
    skipped: int = 0  # picked but left alone (became ineligible, or a child still active)
    dry_run: bool = False

    def __str__(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        text = (
            f"{verb} {self.tasks} task(s), {self.children} subtask(s), {self.artifacts} artifact(s), "
            f"{self.files} file(s)"
        )
        return text + (f"; {self.skipped} left alone" if self.skipped else "")


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str | float | timedelta) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"45s"``, ``"2w"`` or plain seconds -> ``timedelta``."""
    if isinstance(text, timedelta):
        return text
    match = _AGE.match(str(text))
    if not match:
        raise ValueError(f"not an age: {text!r} (use e.g. 30d, 12h, 90m, 45s or seconds)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def _cutoff(older_than: Age | None, now: datetime | None) -> datetime:
    from .conf import app_settings

    age = app_settings.MAX_AGE if older_than is None else parse_age(older_than)
    return (now or timezone.now()) - age


def expired_tasks(
    older_than: Age | None = None, *, now: datetime | None = None, using: str | None = None
) -> QuerySet[UserTaskStatus]:
    """Top-level tasks that finished before the cutoff (children go with them).  A final row
    without a ``finished`` time (written final directly, as django-user-tasks' users may have
    done) is aged by its last change, ``modified``."""
    from .models import UserTaskStatus

    db = using or router.db_for_write(UserTaskStatus)
    cutoff = _cutoff(older_than, now)
    return (
        UserTaskStatus.objects.using(db)
        .filter(parent__isnull=True, state__in=FINAL_STATES)
        .filter(Q(finished__lt=cutoff) | Q(finished__isnull=True, modified__lt=cutoff))
    )


def purge(
    older_than: Age | None = None,
    *,
    now: datetime | None = None,
    batch_size: int | None = None,
    dry_run: bool = False,
    using: str | None = None,
    progress: Callable[[int, int], Any] | None = None,
) -> PurgeResult:
    """Delete expired tasks; returns a :class:`PurgeResult`.

    ``older_than``: a ``timedelta`` or text like ``"30d"`` (default ``MAX_AGE``).
    ``progress``: called as ``progress(done, total)`` after each batch (``total`` is the number
    of expired top-level tasks when the purge started)."""
    from .conf import app_settings
    from .models import UserTaskStatus

    db = using or router.db_for_write(UserTaskStatus)
    now = now or timezone.now()
    cutoff = _cutoff(older_than, now)
    batch_size = max(1, int(batch_size or app_settings.PURGE_BATCH_SIZE))
    candidates = expired_tasks(older_than, now=now, using=db)
    total = candidates.count()
    result = PurgeResult(dry_run=dry_run)
    if progress:
        progress(0, total)
    last, done = 0, 0
    while True:
        ids = list(candidates.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            break
        last = ids[-1]
        if dry_run:
            _count(ids, db, result, batch_size)
        else:
            _purge_batch(ids, cutoff, db, result, batch_size)
        done += len(ids)
        if progress:
            progress(min(done, total), total)
    if result.tasks and not dry_run:
        logger.info("usertasks purge: %s", result)
    return result


def _files(model: Any, status_ids: list[int], db: str) -> list[tuple[Any, str]]:
    from .models import artifact_storage

    storage = artifact_storage()
    return [
        (storage, name)
        for name in model.objects.using(db)
        .filter(status_id__in=status_ids)
        .exclude(file="")
        .values_list("file", flat=True)
    ]


def _count(ids: list[int], db: str, result: PurgeResult, batch_size: int) -> None:
    from .models import UserTaskArtifact, UserTaskStatus

    rows = UserTaskStatus.objects.using(db)
    result.tasks += len(ids)
    for level in _levels(rows, ids, batch_size):
        result.children += len(level)
        _count_artifacts(UserTaskArtifact, level, db, result)
    _count_artifacts(UserTaskArtifact, ids, db, result)


def _count_artifacts(model: Any, ids: list[int], db: str, result: PurgeResult) -> None:
    qs = model.objects.using(db).filter(status_id__in=ids)
    result.artifacts += qs.count()
    result.files += qs.exclude(file="").count()


def _levels(rows: Any, ids: list[int], batch_size: int) -> Iterator[list[int]]:
    """Descendants of ``ids`` in chunks of at most ``batch_size`` ids (depth first)."""
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        last = 0
        while True:
            kids = list(
                rows.filter(parent_id__in=chunk, pk__gt=last).order_by("pk").values_list("pk", flat=True)[:batch_size]
            )
            if not kids:
                break
            last = kids[-1]
            yield from _levels(rows, kids, batch_size)
            yield kids


class _Changed(Exception):
    """The DELETE removed other rows than the batch picked: roll the batch back."""


def _purge_batch(ids: list[int], cutoff: datetime, db: str, result: PurgeResult, batch_size: int) -> None:
    from .models import UserTaskStatus

    rows = UserTaskStatus.objects.using(db)
    # Children first, deepest first, each chunk in its own short transaction; then the batch.
    for level in _levels(rows, ids, batch_size):  # lazily: memory stays bounded by the batch
        n, _ = _delete(level, None, db, result)
        result.children += n
    n, skipped = _delete(ids, cutoff, db, result)
    result.tasks += n
    result.skipped += skipped


def _delete(ids: list[int], cutoff: datetime | None, db: str, result: PurgeResult) -> tuple[int, int]:
    """Delete the rows ``ids`` that are final (and finished before ``cutoff``, when given) and have
    no child left, with their events and artifacts; their files once committed.
    Returns ``(deleted, left alone)``."""
    from .models import UserTaskArtifact, UserTaskEvent, UserTaskStatus

    rows = UserTaskStatus.objects.using(db)
    changed, locked = 0, 0
    while changed < 3:
        try:
            with transaction.atomic(using=db):
                guard = rows.filter(pk__in=ids, state__in=FINAL_STATES).exclude(
                    Exists(rows.filter(parent_id=OuterRef("pk")))
                )
                if cutoff is not None:
                    guard = guard.filter(Q(finished__lt=cutoff) | Q(finished__isnull=True, modified__lt=cutoff))
                picked = list(guard.values_list("pk", flat=True))
                if not picked:
                    return 0, len(ids)
                files = _files(UserTaskArtifact, picked, db)
                artifacts = UserTaskArtifact.objects.using(db).filter(status_id__in=picked)
                n_artifacts = artifacts.count()
                artifacts._raw_delete(db)
                UserTaskEvent.objects.using(db).filter(status_id__in=picked)._raw_delete(db)
                # Re-runs of these tasks stay, pointing at nothing (``rerun_of`` is SET_NULL).
                rows.filter(rerun_of_id__in=picked).update(rerun_of=None)
                # The guard again, in the DELETE itself.
                deleted = guard.filter(pk__in=picked)._raw_delete(db)
                if deleted != len(picked):
                    raise _Changed()
                delete_files_on_commit(files, using=db)
            result.artifacts += n_artifacts
            result.files += len(files)
            return deleted, len(ids) - deleted
        except _Changed:
            changed += 1
        except OperationalError as exc:
            # Another writer holds the lock (SQLite's "database is locked" when a transaction
            # that has read must write, a deadlock elsewhere): the batch is one short
            # transaction, rolled back whole; try it again after a pause.
            text = str(exc).lower()
            if "lock" not in text or locked >= LOCK_RETRIES:
                raise
            locked += 1
            time.sleep(min(0.05 * 2**locked, 2.0))
    return 0, len(ids)


@maintenance_actor(actor_name="usertasks_purge", max_retries=0, time_limit=60 * 60 * 1000)
def purge_expired_tasks() -> None:
    """One purge of the tasks older than ``MAX_AGE``, for a scheduler of your own (the workers
    already purge every ``PURGE_EVERY`` seconds)."""
    logger.info("usertasks purge: %s", purge())
