from django.apps import AppConfig


class UserTasksConfig(AppConfig):
    """The ``user_tasks`` app: proxy models over the usertasks tables and Celery tracking."""

    name = "user_tasks"
    label = "user_tasks"
    verbose_name = "User Tasks"
    default_auto_field = "django.db.models.AutoField"

    def ready(self):
        from . import signals  # noqa: F401  (connects the Celery and usertasks signal handlers)
