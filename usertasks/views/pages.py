"""The HTML pages: dashboard, status page, cancel, delete, rerun, artifact download."""

import json

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.db.models import prefetch_related_objects
from django.http import Http404, HttpResponseForbidden, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.text import capfirst
from django.utils.translation import get_language
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy as _lazy
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from ..api import FILTERS, get_visible, paginate, task_detail, user_tasks
from ..conf import app_settings
from ..exceptions import EnqueueError, RerunError
from ..models import UserTaskArtifact
from ..permissions import get_policy, may_rerun
from ..sending import rerun_call
from .artifacts import serve_artifact


def js_strings():
    """Translated strings the page script needs (rendered with ``json_script``)."""
    return {
        "steps": _("%(done)s of %(total)s steps"),
        "none": _("None yet."),
        "download": _("Download"),
        "hm": _("%(h)d h %(m)d min"),
        "ms": _("%(m)d min %(s)d s"),
        "s": _("%(s)d s"),
        "stale": _("Live updates paused; reload the page."),
        "by": _("by %(name)s"),
        "failed_all": _("%(count)s failed."),
        "failed_some": _("%(count)s failed; the first %(shown)s are listed."),
        "counters": {name: str(label) for name, label in COUNTER_LABELS.items()},
        "succeeded_in": _("Succeeded in %(duration)s"),
        "failed_with": _("Failed: %(error)s"),
        "language": get_language() or settings.LANGUAGE_CODE,
        "time_zone": timezone.get_current_timezone_name(),
    }


#: How the page names the outcome counters it knows; others are shown as they are named.
COUNTER_LABELS = {"succeeded": _lazy("Succeeded"), "failed": _lazy("Failed"), "skipped": _lazy("Skipped")}


def counter_label(name):
    return str(COUNTER_LABELS.get(name) or capfirst(name.replace("_", " ")))


def _base_context():
    return {"usertasks_base_template": app_settings.BASE_TEMPLATE, "usertasks_js_strings": js_strings()}


def _not_found(request):
    """404 for a task that does not exist or that ``request.user`` may not see (same answer)."""
    response = render(request, "usertasks/not_found.html", _base_context(), status=404)
    return response


@require_GET
def dashboard(request):
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    current = request.GET.get("filter") or ""
    if current not in FILTERS:
        current = ""
    page = paginate(request, user_tasks(request.user, current), app_settings.PAGE_SIZE)
    filters = [
        ("", _("All")),
        ("active", _("Active")),
        ("finished", _("Finished")),
        ("failed", _("Failed")),
        ("canceled", _("Canceled")),
    ]
    context = _base_context()
    tasks = list(page.object_list)
    context.update(
        {
            "page": page,
            "tasks": tasks,
            "has_active": any(t.is_active for t in tasks),
            "filters": filters,
            "current_filter": current,
            "live_interval_ms": 2000,
        }
    )
    return render(request, "usertasks/dashboard.html", context)


@require_GET
def status_page(request, uuid):
    try:
        status = get_visible(request.user, uuid)
    except Http404:
        return _not_found(request)
    prefetch_related_objects([status], "artifacts")  # one query for the JSON and the template
    policy = get_policy()
    context = _base_context()
    detail = task_detail(status, request.user, policy)
    context.update(
        {
            "task": status,
            "detail": detail,
            "counts_shown": [(counter_label(name), n) for name, n in detail["counts"].items()],
            "can_cancel": status.is_active and policy.can_cancel(request.user, status),
            "can_delete": status.is_final and policy.can_delete(request.user, status),
            "can_rerun": status.is_rerunnable and may_rerun(policy, request.user, status),
            "can_download": policy.can_download(request.user, status),
            "show_traceback": policy.can_see_traceback(request.user, status),
            # What a task of Django's task API returned (usertasks.backends), as JSON.
            "return_value": "" if status.return_value is None else json.dumps(status.return_value, indent=2),
            "stream_url": reverse("usertasks:api-events", args=[status.uuid])
            if app_settings.LIVE_STREAM_SECONDS
            else "",
            "poll_url": reverse("usertasks:api-detail", args=[status.uuid]),
            "refresh_seconds": 5,
        }
    )
    return render(request, "usertasks/status.html", context)


def _confirmed(request):
    return request.POST.get("confirm") == "yes"


def _next_url(request, default):
    url = request.POST.get("next") or ""
    if url and url_has_allowed_host_and_scheme(url, {request.get_host()}, request.is_secure()):
        return url
    return default


def _confirm_page(request, status, action):
    context = _base_context()
    context.update({"task": status, "action": action, "next": request.POST.get("next", "")})
    return render(request, "usertasks/confirm.html", context)


def _confirmed_action(request, uuid, allowed, refusal, action):
    """The shared steps of cancel and delete: the task if visible (else 404), the policy's
    answer (else 403), the confirmation (else the confirmation page).  Returns ``(status,
    response)``; go on only when ``response`` is ``None``."""
    try:
        status = get_visible(request.user, uuid)
    except Http404:
        return None, _not_found(request)
    if not allowed(request.user, status):
        return status, HttpResponseForbidden(refusal)
    if not _confirmed(request):
        return status, _confirm_page(request, status, action)
    return status, None


@require_POST
def cancel(request, uuid):
    status, response = _confirmed_action(
        request, uuid, get_policy().can_cancel, _("You may not cancel this task."), "cancel"
    )
    if response is not None:
        return response
    if status.cancel(by=request.user):
        messages.info(request, _("Cancel requested."))
    else:
        messages.warning(request, _("The task had already finished."))
    return HttpResponseRedirect(_next_url(request, status.get_absolute_url()))


@require_POST
def delete(request, uuid):
    status, response = _confirmed_action(
        request, uuid, get_policy().can_delete, _("You may not delete this task."), "delete"
    )
    if response is not None:
        return response
    if not status.delete_with_files():
        messages.warning(request, _("Only finished tasks can be deleted."))
        return redirect(status)
    messages.info(request, _("Task deleted."))
    return HttpResponseRedirect(_next_url(request, reverse("usertasks:dashboard")))


@require_http_methods(["GET", "POST"])
def rerun(request, uuid):
    """Start a finished task again.  GET, or a POST without ``confirm=yes``, shows the
    confirmation page (its form posts here); the confirmed POST starts the task and redirects
    to the new task's page (403 without ``can_rerun``)."""
    try:
        status = get_visible(request.user, uuid)
    except Http404:
        return _not_found(request)
    if not may_rerun(get_policy(), request.user, status):
        return HttpResponseForbidden(_("You may not run this task again."))
    if not status.is_final:
        messages.warning(request, _("Only a finished task can be run again."))
        return redirect(status)
    if request.method == "GET" or not _confirmed(request):
        try:
            rerun_call(status)  # say now, not after the confirmation, why it cannot run again
        except RerunError as exc:
            messages.error(request, str(exc))
            return redirect(status)
        context = _base_context()
        context.update({"task": status})
        return render(request, "usertasks/rerun.html", context)
    try:
        new = status.rerun(by=request.user)
    except (RerunError, EnqueueError) as exc:
        messages.error(request, str(exc))
        return redirect(status)
    if new.rerun_of_id == status.pk:
        messages.info(request, _("The task was started again."))
    else:
        messages.info(request, _("An identical task is already running: here it is."))
    return redirect(new)


@require_GET
def artifact(request, uuid):
    try:
        item = UserTaskArtifact.objects.select_related("status").get(uuid=uuid)
        status = get_visible(request.user, item.status.uuid)
    except (UserTaskArtifact.DoesNotExist, Http404):
        return _not_found(request)
    if not get_policy().can_download(request.user, status, item):
        return _not_found(request)
    return serve_artifact(item)
