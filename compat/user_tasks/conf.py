"""The ``USER_TASKS_*`` settings of django-user-tasks, read at access time.

``settings.USER_TASKS_MAX_AGE`` and the others are read on every access (``override_settings``
works).  Artifact storage is shared with usertasks: ``USERTASKS["ARTIFACT_STORAGE"]`` when set,
else ``STORAGES["user_task_artifacts"]`` when that alias exists, else
``USER_TASKS_ARTIFACT_STORAGE``, else the default storage (see ``usertasks.conf``).
"""

from datetime import timedelta

from django.conf import settings as django_settings
from django.utils.module_loading import import_string

DEFAULT_MAX_AGE = timedelta(days=30)


def _classes(values):
    return tuple(import_string(v) if isinstance(v, str) else v for v in values)


def get_storage(import_path=None):
    """The storage instance that holds artifact files: the one usertasks resolves (see the module
    doc; ``import_path`` is ``USER_TASKS_ARTIFACT_STORAGE``, which usertasks reads itself)."""
    from usertasks.models import ArtifactStorage

    return ArtifactStorage.resolve()


class LazySettings:
    """Attribute access to the ``USER_TASKS_*`` Django settings, with their defaults."""

    @property
    def USER_TASKS_ARTIFACT_FILTERS(self):
        """Filter backends of the artifact listing of the REST API (classes or dotted paths)."""
        from .filters import ArtifactFilterBackend

        return _classes(getattr(django_settings, "USER_TASKS_ARTIFACT_FILTERS", (ArtifactFilterBackend,)))

    @property
    def USER_TASKS_STATUS_FILTERS(self):
        """Filter backends of the status listing of the REST API (classes or dotted paths)."""
        from .filters import StatusFilterBackend

        return _classes(getattr(django_settings, "USER_TASKS_STATUS_FILTERS", (StatusFilterBackend,)))

    @property
    def USER_TASKS_ARTIFACT_STORAGE(self):
        """The storage instance artifact files are kept in."""
        return get_storage(getattr(django_settings, "USER_TASKS_ARTIFACT_STORAGE", None))

    @property
    def USER_TASKS_MAX_AGE(self):
        """How long a *finished* task is kept (counted from when it finished); a ``timedelta``
        or a number of seconds.  Default: 30 days."""
        value = getattr(django_settings, "USER_TASKS_MAX_AGE", DEFAULT_MAX_AGE)
        if not isinstance(value, timedelta):
            value = timedelta(seconds=value)
        return value

    @property
    def USER_TASKS_PURGE_BATCH_SIZE(self):
        """Rows deleted per transaction by ``purge_old_user_tasks``.  Default: the usertasks
        ``PURGE_BATCH_SIZE``."""
        from usertasks.conf import app_settings

        return int(getattr(django_settings, "USER_TASKS_PURGE_BATCH_SIZE", app_settings.PURGE_BATCH_SIZE))


settings = LazySettings()
