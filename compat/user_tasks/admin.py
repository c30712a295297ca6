"""Admin pages of the ``user_tasks`` proxies (the usertasks admin shows the same rows)."""

from django.contrib import admin

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
class UserTaskStatusAdmin(admin.ModelAdmin):
    list_display = ("created", "uuid", "state", "user", "name", "backend")
    list_filter = ("state", "backend")
    ordering = ("-created",)
    search_fields = ("uuid", "task_id", "task_class", "name", "user__username", "user__email")
    readonly_fields = ("parent", "rerun_of")  # a select of every task would be the alternative
    raw_id_fields = ("user", "canceled_by")
