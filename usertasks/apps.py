from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class UserTasksConfig(AppConfig):
    name = "usertasks"
    label = "usertasks"
    verbose_name = _("User tasks")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import (
            checks,  # noqa: F401  (registers the system checks)
            middleware,
            operations,
        )
        from .broker import configured_broker
        from .cancel import cancel
        from .sending import rerun

        operations.provide(cancel=cancel, rerun=rerun)
        middleware.install(configured_broker())
