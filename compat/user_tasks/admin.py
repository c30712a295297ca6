"""Admin pages of the ``user_tasks`` proxies (the usertasks admin shows the same rows)."""

from django.contrib import admin

from usertasks.admin import UserTaskStatusAdmin as TaskAdmin

from .models import UserTaskArtifact, UserTaskStatus


@admin.register(UserTaskArtifact)
class UserTaskArtifactAdmin(admin.ModelAdmin):
    list_display = ("created", "uuid", "status", "name", "text")
    list_filter = ("name",)
    ordering = ("-created",)
    search_fields = ("uuid", "name", "text")
    # Artifacts are outputs of tasks: shown, not edited.
    readonly_fields = ("uuid", "status", "name", "file", "url", "text", "created")
    fields = readonly_fields


@admin.register(UserTaskStatus)
class UserTaskStatusAdmin(TaskAdmin):
    """The same rows, pages and safe actions as usertasks' admin (cancel, run again, delete a
    finished task with its stored files; no ``delete_selected``), with django-user-tasks'
    columns."""

    list_display = ("created", "uuid", "state", "user", "name", "backend")  # type: ignore[assignment]
    list_filter = ("state", "backend")  # type: ignore[assignment]
    ordering = ("-created",)
    search_fields = ("uuid", "task_id", "task_class", "name", "user__username", "user__email")
