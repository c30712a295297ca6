"""The admin: tasks with their artifacts and event history inline, read-only, and three actions
that act only on the rows where they are legal (``docs/admin.md``):

* ``cancel_tasks``: active tasks (``status.cancel()``); finished ones are skipped.
* ``rerun_tasks``: finished tasks whose input was stored (``status.rerun()``); the others are
  skipped, with the reason.
* ``delete_tasks``: finished tasks, with their children, artifacts, events and stored files
  (deleted once the transaction commits); active ones are skipped.

Django's ``delete_selected`` is not offered, and the delete button of a task's page takes the
same path: an active task cannot be deleted.  Cancel and delete ask for a confirmation first.
"""

from collections import Counter

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from .exceptions import AbortBackendError, EnqueueError, RerunError
from .models import UserTaskArtifact, UserTaskEvent, UserTaskStatus
from .states import FINAL_STATES


def _is_active(row):
    return row.is_active


def _is_final(row):
    return row.is_final


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


def _report(modeladmin, request, acted, skipped, done_text, reasons=()):
    """One message: how many rows the action acted on and how many it skipped (and why)."""
    parts = [done_text % {"count": acted}]
    if skipped:
        parts.append(ngettext("%(count)d skipped", "%(count)d skipped", skipped) % {"count": skipped})
    text = "; ".join(parts)
    if reasons:
        text += ": " + "; ".join(f"{reason} ({n})" for reason, n in reasons.most_common(5))
    modeladmin.message_user(request, text + ".", messages.WARNING if skipped else messages.SUCCESS)


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
    actions = ("cancel_tasks", "rerun_tasks", "delete_tasks")
    confirmation_template = "usertasks/admin/confirm_action.html"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("user", "parent", "canceled_by", "rerun_of")

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    @admin.display(description=gettext_lazy("progress"))
    def progress(self, obj):
        pct = obj.percent
        if pct is None:
            return f"{obj.completed_steps}"
        return f"{obj.completed_steps}/{obj.total_steps} ({pct:.0f}%)"

    # -- permissions ----------------------------------------------------------------------------

    def has_operate_permission(self, request):
        """Cancel and rerun: users with the ``change`` permission of tasks (and superusers)."""
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")

    def has_delete_permission(self, request, obj=None):
        """Deleting needs Django's ``delete`` permission, and a finished task."""
        if obj is not None and obj.state not in FINAL_STATES:
            return False
        return super().has_delete_permission(request, obj)

    # -- the delete of one task (its page's "Delete" button) -------------------------------------

    def delete_model(self, request, obj):
        if not obj.delete_with_files():
            raise PermissionDenied(_("An active task cannot be deleted."))

    def delete_queryset(self, request, queryset):
        for obj in queryset.filter(state__in=FINAL_STATES):
            obj.delete_with_files()

    def get_deleted_objects(self, objs, request):
        """What the delete page lists: the tasks and how many rows go with them (a container's
        thousands of children are counted, not listed)."""
        objs = list(objs)
        ids = [o.pk for o in objs]
        tasks, frontier = list(ids), list(ids)
        while frontier:
            frontier = list(UserTaskStatus.objects.filter(parent_id__in=frontier).values_list("pk", flat=True))
            tasks.extend(frontier)
        counts = {
            UserTaskStatus._meta.verbose_name_plural: len(tasks),
            UserTaskArtifact._meta.verbose_name_plural: UserTaskArtifact.objects.filter(status_id__in=tasks).count(),
            UserTaskEvent._meta.verbose_name_plural: UserTaskEvent.objects.filter(status_id__in=tasks).count(),
        }
        return [str(o) for o in objs], {k: v for k, v in counts.items() if v}, set(), []

    # -- actions ----------------------------------------------------------------------------------

    def _confirm(self, request, queryset, action, legal, question):  # legal(row): acted on
        """Unless the form was confirmed: a page listing the rows the action will act on and how
        many it will skip, whose form posts the action again with ``post=yes``."""
        if request.POST.get("post") == "yes":
            return None
        rows = list(queryset)
        acting = [r for r in rows if legal(r)]
        context = {
            **self.admin_site.each_context(request),
            "title": question,
            "opts": self.opts,
            "queryset": rows,
            "acting": acting,
            "skipped": len(rows) - len(acting),
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        return TemplateResponse(request, self.confirmation_template, context)

    @admin.action(description=gettext_lazy("Cancel selected tasks"), permissions=("operate",))
    def cancel_tasks(self, request, queryset):
        confirm = self._confirm(request, queryset, "cancel_tasks", _is_active, _("Cancel these tasks?"))
        if confirm is not None:
            return confirm
        finished = queryset.finished().count()
        acted = skipped = 0
        reasons: Counter[str] = Counter()
        for status in queryset.active():  # (custom states of Celery tasks included)
            try:
                done = status.cancel(by=request.user)
            except AbortBackendError as exc:
                skipped += 1
                reasons[str(exc)] += 1
                continue
            if done:
                acted += 1
            else:
                skipped += 1
                reasons[_("finished meanwhile")] += 1
        if finished:
            skipped += finished
            reasons[_("already finished")] += finished
        _report(
            self,
            request,
            acted,
            skipped,
            ngettext("Canceled %(count)d task", "Canceled %(count)d tasks", acted),
            reasons,
        )
        return None

    @admin.action(description=gettext_lazy("Run selected tasks again"), permissions=("operate",))
    def rerun_tasks(self, request, queryset):
        active = queryset.active().count()
        acted = skipped = 0
        reasons: Counter[str] = Counter()
        for status in queryset.finished().select_related("user"):
            try:
                status.rerun(by=request.user)
            except (RerunError, EnqueueError) as exc:
                skipped += 1
                reasons[str(exc).rstrip(".")] += 1
                continue
            acted += 1
        if active:
            skipped += active
            reasons[_("not finished")] += active
        _report(
            self,
            request,
            acted,
            skipped,
            ngettext("Started %(count)d task again", "Started %(count)d tasks again", acted),
            reasons,
        )

    @admin.action(description=gettext_lazy("Delete selected finished tasks and their files"), permissions=("delete",))
    def delete_tasks(self, request, queryset):
        confirm = self._confirm(request, queryset, "delete_tasks", _is_final, _("Delete these tasks?"))
        if confirm is not None:
            return confirm
        active = queryset.active().count()
        acted = skipped = 0
        for status in queryset.finished():
            if status.delete_with_files():
                acted += 1
            else:
                skipped += 1
        reasons: Counter[str] = Counter()
        if active:
            reasons[_("still active")] += active
        _report(
            self,
            request,
            acted,
            skipped + active,
            ngettext("Deleted %(count)d task", "Deleted %(count)d tasks", acted),
            reasons,
        )
        return None
