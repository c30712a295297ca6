"""``purge_old_user_tasks``: finished tasks, counted from when they finished, in batches.

Unlike django-user-tasks (which deletes by creation date, running tasks included, and leaves the
stored files behind), only tasks whose whole tree is final are deleted, ``USER_TASKS_MAX_AGE``
after they *finished*, together with the files of their artifacts, ``USER_TASKS_PURGE_BATCH_SIZE``
tasks per transaction (this is ``usertasks.purge`` with the ``USER_TASKS_*`` settings).
"""

import logging

from django.db import router, transaction

from usertasks.storage import delete_files_on_commit
from usertasks.models import UserTaskArtifact, UserTaskStatus
from usertasks.states import FINAL_STATES

from .conf import settings

logger = logging.getLogger("user_tasks")


def _tree(pks):
    """``pks`` and every descendant of them."""
    ids = list(pks)
    frontier = ids
    while frontier:
        frontier = list(UserTaskStatus.objects.filter(parent_id__in=frontier).values_list("pk", flat=True))
        ids.extend(frontier)
    return ids


def delete_tasks(pks, using=None, only_final=False):
    """Delete the tasks ``pks`` with their descendants, artifacts and (on commit) stored files."""
    db = using or router.db_for_write(UserTaskStatus)
    with transaction.atomic(using=db):
        rows = UserTaskStatus.objects.using(db).filter(pk__in=list(pks))
        if only_final:
            rows = rows.filter(state__in=FINAL_STATES)
        pks = list(rows.values_list("pk", flat=True))
        tree = _tree(pks)
        files = [
            (a.file.storage, a.file.name)
            for a in UserTaskArtifact.objects.using(db).filter(status_id__in=tree).exclude(file="")
        ]
        UserTaskStatus.objects.using(db).filter(pk__in=pks).delete()
        delete_files_on_commit(files, using=db)
    return len(pks)


def purge(now=None, max_age=None, batch_size=None):
    """Delete expired tasks (see the module doc) with ``usertasks.purge``; returns how many
    top-level tasks went."""
    from usertasks.purge import purge as core_purge

    result = core_purge(
        settings.USER_TASKS_MAX_AGE if max_age is None else max_age,
        now=now, batch_size=batch_size or settings.USER_TASKS_PURGE_BATCH_SIZE,
    )
    if result.tasks:
        logger.info("user_tasks: purged %s", result)
    return result.tasks
