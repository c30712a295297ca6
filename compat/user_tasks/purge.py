"""``purge_old_user_tasks``: finished tasks, counted from when they finished, in batches.

Unlike django-user-tasks (which deletes by creation date, running tasks included, and leaves the
stored files behind), only tasks whose whole tree is final are deleted, ``USER_TASKS_MAX_AGE``
after they *finished*, together with the files of their artifacts, ``USER_TASKS_PURGE_BATCH_SIZE``
tasks per transaction (this is ``usertasks.purge`` with the ``USER_TASKS_*`` settings).
"""

import logging

from usertasks.purge import purge as core_purge

from .conf import settings

logger = logging.getLogger("user_tasks")


def purge(now=None, max_age=None, batch_size=None):
    """Delete expired tasks (see the module doc) with ``usertasks.purge``; returns how many
    top-level tasks went."""
    result = core_purge(
        settings.USER_TASKS_MAX_AGE if max_age is None else max_age,
        now=now,
        batch_size=batch_size or settings.USER_TASKS_PURGE_BATCH_SIZE,
    )
    if result.tasks:
        logger.info("user_tasks: purged %s", result)
    return result.tasks
