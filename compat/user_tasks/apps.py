from django.apps import AppConfig


class UserTasksConfig(AppConfig):
    """The ``user_tasks`` app: proxy models over the usertasks tables and Celery tracking."""

    name = "user_tasks"
    label = "user_tasks"
    verbose_name = "User Tasks"
    default_auto_field = "django.db.models.AutoField"

    def ready(self):
        from django.contrib.auth import get_user_model

        from . import signals  # noqa: F401  (connects the Celery and usertasks signal handlers)
        from .models import UserTasksOfUser

        user_model = get_user_model()
        current = user_model.__dict__.get("usertaskstatus_set")
        if current is not None and not isinstance(current, UserTasksOfUser):
            user_model.usertaskstatus_set = UserTasksOfUser(current)  # type: ignore[assignment]
