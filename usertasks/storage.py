"""Removing the stored files of artifacts once the rows that pointed at them are gone."""

import logging
import os

from django.db import transaction

logger = logging.getLogger("usertasks")

__all__ = ["delete_files_on_commit"]


def delete_files_on_commit(files, using=None):
    """Delete the stored files ``files`` (``(storage, name)`` pairs) once the current transaction
    commits (at once outside one): a rolled-back delete keeps them.  A storage that fails is
    logged and the others are still deleted; local folders left empty go too."""

    def run():
        for storage, name in files:
            try:
                storage.delete(name)
            except Exception:  # storage down: report, keep going
                logger.exception("Could not delete artifact file %r", name)
        _remove_empty_dirs(files)

    transaction.on_commit(run, using=using)


def _remove_empty_dirs(files):
    """Local storages: remove the ``usertasks/<task>/<artifact>/`` folders left empty."""
    for storage, name in files:
        try:
            path = storage.path(name)
        except Exception:  # not a local storage
            return
        folder = os.path.dirname(path)
        for _ in range(2):
            try:
                os.rmdir(folder)
            except OSError:
                break
            folder = os.path.dirname(folder)
