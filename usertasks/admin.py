"""Read-only admin: tasks with their artifacts and event history inline."""

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from .models import UserTaskArtifact, UserTaskEvent, UserTaskStatus


class ReadOnlyMixin:
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class ArtifactInline(ReadOnlyMixin, admin.TabularInline):
    model = UserTaskArtifact
    fields = ("name", "file", "url", "text", "created")
    readonly_fields = fields
    extra = 0
    show_change_link = False

    def has_delete_permission(self, request, obj=None):
        return False


class EventInline(ReadOnlyMixin, admin.TabularInline):
    model = UserTaskEvent
    fields = ("created", "kind", "attempt", "detail", "actor")
    readonly_fields = fields
    extra = 0

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("actor")

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(UserTaskStatus)
class UserTaskStatusAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("name", "user", "state", "progress", "attempts", "created", "finished", "task_class")
    list_filter = ("state", "backend", "task_class", "is_container", "created")
    search_fields = ("name", "uuid", "task_id", "user__username", "user__email", "task_class")
    list_select_related = ("user",)
    date_hierarchy = "created"
    show_full_result_count = False
    inlines = (ArtifactInline, EventInline)
    readonly_fields = [f.name for f in UserTaskStatus._meta.fields]
    list_per_page = 50

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("user", "parent", "canceled_by")

    @admin.display(description=_("progress"))
    def progress(self, obj):
        pct = obj.percent
        if pct is None:
            return f"{obj.completed_steps}"
        return f"{obj.completed_steps}/{obj.total_steps} ({pct:.0f}%)"
