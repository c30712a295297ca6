"""Who may see, download from, cancel, delete and run again a task.

The class named by ``USERTASKS["PERMISSIONS"]`` answers five questions separately: which tasks a
user may view (``visible()``, a queryset filter, so listing costs one query), and for one of those
whether they may download its artifacts, cancel it, delete it, run it again.  Whoever may
not *view* a task gets 404 from every endpoint (its page, the API, its artifacts, cancel, delete
and rerun), so the existence of other people's tasks does not leak.  Someone who may view a task
but not cancel, delete or rerun it gets 403 from those endpoints.

Example (``docs/web.md``): support staff who may view every task but not delete it::

    from usertasks.permissions import OwnerOrSuperuser

    class SupportMayView(OwnerOrSuperuser):
        def visible(self, user, queryset):
            if user.is_authenticated and user.is_active and user.is_staff:
                return queryset  # view (and download) every task
            return super().visible(user, queryset)

        def can_download(self, user, status, artifact=None):
            return True  # only called for tasks ``visible()`` let through

        # can_cancel / can_delete / can_rerun stay "owner or superuser": staff get 403 there.

    USERTASKS = {"PERMISSIONS": "myproject.permissions.SupportMayView"}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import UserTaskArtifact, UserTaskStatus, UserTaskStatusQuerySet

from django.utils.module_loading import import_string

from .conf import app_settings

__all__ = ["OwnerOrSuperuser", "get_policy", "may_rerun"]


class OwnerOrSuperuser:
    """The default policy: the user who started a task, and superusers, may do everything."""

    def visible(self, user: Any, queryset: UserTaskStatusQuerySet) -> UserTaskStatusQuerySet:
        """The tasks of ``queryset`` that ``user`` may view (one query, no per-row checks)."""
        return queryset.visible_to(user)

    def is_owner_or_superuser(self, user: Any, status: UserTaskStatus) -> bool:
        if user is None or not user.is_authenticated or not user.is_active:
            return False
        return user.is_superuser or status.user_id == user.pk

    # Viewing is decided by ``visible()`` alone; the other answers are asked only about tasks
    # ``visible()`` let through.

    def can_download(self, user: Any, status: UserTaskStatus, artifact: UserTaskArtifact | None = None) -> bool:
        return self.is_owner_or_superuser(user, status)

    def can_cancel(self, user: Any, status: UserTaskStatus) -> bool:
        return self.is_owner_or_superuser(user, status)

    def can_delete(self, user: Any, status: UserTaskStatus) -> bool:
        return self.is_owner_or_superuser(user, status)

    def can_rerun(self, user: Any, status: UserTaskStatus) -> bool:
        """Whether ``user`` may start ``status`` again (``status.rerun()``): the new task belongs
        to the original's owner, whoever asks."""
        return self.is_owner_or_superuser(user, status)

    def can_see_traceback(self, user: Any, status: UserTaskStatus) -> bool:
        """Tracebacks are for staff only, even for the task's owner."""
        return bool(user is not None and user.is_authenticated and (user.is_staff or user.is_superuser))


def get_policy() -> Any:
    """An instance of the class named by ``USERTASKS["PERMISSIONS"]`` (resolved on each call)."""
    policy = app_settings.PERMISSIONS
    if isinstance(policy, str):
        policy = import_string(policy)
    return policy() if isinstance(policy, type) else policy


def may_rerun(policy: Any, user: Any, status: UserTaskStatus) -> bool:
    """``policy.can_rerun(user, status)``; a policy written before ``can_rerun`` existed (not
    derived from :class:`OwnerOrSuperuser`) answers with its ``can_cancel``."""
    ask = getattr(policy, "can_rerun", None) or policy.can_cancel
    return bool(ask(user, status))
