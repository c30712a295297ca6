"""The pages of usertasks (``usertasks.urls``).  Views stay thin: queries live in the models'
QuerySet, access answers in :mod:`usertasks.permissions`, JSON in :mod:`usertasks.api`."""

from .pages import artifact, cancel, dashboard, delete, rerun, status_page

__all__ = ["artifact", "cancel", "dashboard", "delete", "rerun", "status_page"]
