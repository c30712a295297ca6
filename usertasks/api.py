"""The JSON API (``usertasks:api-*``), plain Django views.  Schema: ``docs/openapi.yaml``.

=================  ========================================  ===========================
URL name           path (under the app's include)            methods
=================  ========================================  ===========================
``api-list``       ``api/tasks/``                            GET
``api-detail``     ``api/tasks/<uuid>/``                     GET
``api-cancel``     ``api/tasks/<uuid>/cancel/``              POST
``api-delete``     ``api/tasks/<uuid>/delete/``              POST (also DELETE on detail)
``api-rerun``      ``api/tasks/<uuid>/rerun/``               POST
``api-events``     ``api/tasks/<uuid>/events/``              GET (``text/event-stream``)
=================  ========================================  ===========================

The API uses the session (and its CSRF protection for POST), like the pages.
"""

import json

from django.core.paginator import EmptyPage, PageNotAnInteger, Paginator
from django.http import Http404, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .conf import app_settings
from .containers.counting import ordered
from .exceptions import EnqueueError, RerunError
from .models import UserTaskStatus
from .permissions import get_policy, may_rerun
from .states import State

FILTERS = ("active", "finished", "failed", "canceled")
MAX_PAGE_SIZE = 100
EVENTS_SHOWN = 100
#: Failed children of a container listed (the first ones to fail), and stages of a pipeline.
CHILDREN_SHOWN = 100
# Event kinds whose detail is an internal (the worker's identity): shown to staff only.
STAFF_ONLY_DETAIL = ("started", "worker_lost", "requeued")


def _iso(value):
    return value.isoformat() if value else None


def _seconds(delta):
    return None if delta is None else round(delta.total_seconds(), 3)


def task_summary(status):
    """The fields every API answer has for a task (no extra query)."""
    return {
        "uuid": str(status.uuid),
        "name": status.name,
        "state": status.effective_state,
        "state_text": str(status.state_text),
        "is_active": status.is_active,
        "completed_steps": status.completed_steps,
        "total_steps": status.total_steps,
        "percent": None if status.percent is None else round(status.percent, 1),
        "message": status.message,
        "attempts": status.attempts,
        "created": _iso(status.created),
        "modified": _iso(status.modified),
        "started": _iso(status.started),
        "finished": _iso(status.finished),
        "elapsed_seconds": _seconds(status.elapsed),
        "remaining_seconds": _seconds(status.eta_remaining),
        "cancel_requested": status.cancel_requested is not None,
        "error": status.error,
        "url": status.get_absolute_url(),
        "api_url": reverse("usertasks:api-detail", args=[status.uuid]),
    }


def task_detail(status, user, policy=None):
    """:func:`task_summary` plus artifacts, events and what ``user`` may do (two queries)."""
    policy = policy or get_policy()
    staff = policy.can_see_traceback(user, status)
    data = task_summary(status)
    may_download = policy.can_download(user, status)
    data.update(
        {
            "task_class": status.task_class,
            "error_class": status.error_class,
            "traceback": status.traceback if staff else None,
            "is_container": status.is_container,
            "children": {
                "total": status.children_total,
                "succeeded": status.children_succeeded,
                "failed": status.children_failed,
                "canceled": status.children_canceled,
                "skipped": status.children_skipped,
            }
            if status.is_container
            else None,
            "counts": dict(ordered(status.counts)),
            **container_contents(status, user, policy),
            "can_cancel": status.is_active and policy.can_cancel(user, status),
            "can_delete": status.is_final and policy.can_delete(user, status),
            "can_rerun": status.is_rerunnable and may_rerun(policy, user, status),
            "rerun_of": str(status.rerun_of.uuid) if status.rerun_of_id and status.rerun_of else None,
            "artifacts": [
                {
                    "uuid": str(a.uuid),
                    "name": a.name,
                    "kind": a.kind,
                    "url": a.get_absolute_url() if may_download and a.kind != "text" else None,
                    "target": a.url if a.kind == "url" else None,
                    "text": a.text if a.kind == "text" else None,
                    "created": _iso(a.created),
                }
                for a in status.artifacts.all()
            ],
            "events": [
                {
                    "kind": e.kind,
                    "text": str(e.get_kind_display()),
                    "time": _iso(e.created),
                    "attempt": e.attempt,
                    "detail": e.detail if staff or e.kind not in STAFF_ONLY_DETAIL else "",
                    "actor": e.actor.get_username() if e.actor is not None else None,
                }
                for e in list(status.events.select_related("actor").order_by("-created", "-id")[:EVENTS_SHOWN])[::-1]
            ],
        }
    )
    return data


def container_contents(status, user, policy):
    """What a container holds, for its status page and its JSON (at most three queries, whatever
    the number of children): ``failed_children`` (``count``, and the first
    :data:`CHILDREN_SHOWN` to fail, each with its name, its error and, where ``user`` may see
    it, the URL of its page) and, for a pipeline, its ``stages`` in order with their states.
    Both are ``None`` for a task that is not a container."""
    if not status.is_container:
        return {"failed_children": None, "stages": None}
    fields = ("pk", "uuid", "name", "state", "error", "finished")
    failed = list(status.failed_children().values(*fields)[:CHILDREN_SHOWN]) if status.children_failed else []
    stages = list(status.stages().values(*fields)[:CHILDREN_SHOWN]) if status.is_pipeline else []
    ids = {c["pk"] for c in failed + stages}
    visible = set()
    if ids:
        visible = set(policy.visible(user, UserTaskStatus.objects.filter(pk__in=ids)).values_list("pk", flat=True))

    def item(child):
        return {
            "uuid": str(child["uuid"]),
            "name": child["name"],
            "state": child["state"],
            "state_text": str(State(child["state"]).label),
            "error": child["error"],
            "finished": _iso(child["finished"]),
            "url": reverse("usertasks:status", args=[child["uuid"]]) if child["pk"] in visible else None,
        }

    return {
        "failed_children": {"count": max(status.children_failed, len(failed)), "shown": [item(c) for c in failed]},
        "stages": [item(c) for c in stages] if status.is_pipeline else None,
    }


def visible_tasks(user):
    return get_policy().visible(user, UserTaskStatus.objects.all())


def get_visible(user, uuid):
    """The task with ``uuid`` if ``user`` may view it, else :class:`Http404`."""
    try:
        return visible_tasks(user).get(uuid=uuid)
    except UserTaskStatus.DoesNotExist:
        raise Http404(_("No such task.")) from None


def _error(status_code, detail):
    return JsonResponse({"detail": str(detail)}, status=status_code)


def user_tasks(user, filter_name=None, uuids=None):
    """The dashboard's rows: ``user``'s own top-level tasks, newest first."""
    qs = UserTaskStatus.objects.for_user(user).filter_by(filter_name).order_by("-created", "-id")
    if uuids:
        qs = qs.filter(uuid__in=uuids)
    return qs


def parse_uuids(values):
    import uuid as uuid_lib

    out = []
    for value in values[:MAX_PAGE_SIZE]:
        try:
            out.append(uuid_lib.UUID(value))
        except ValueError:
            continue
    return out


def paginate(request, qs, default_size):
    try:
        size = int(request.GET.get("page_size") or default_size)
    except ValueError:
        size = default_size
    size = max(1, min(size, MAX_PAGE_SIZE))
    paginator = Paginator(qs, size)
    try:
        return paginator.page(request.GET.get("page") or 1)
    except PageNotAnInteger:
        return paginator.page(1)
    except EmptyPage:
        return paginator.page(paginator.num_pages)


@require_GET
def task_list(request):
    if not request.user.is_authenticated:
        return _error(403, _("Authentication required."))
    filter_name = request.GET.get("filter") or ""
    if filter_name and filter_name not in FILTERS:
        return _error(400, _("Unknown filter."))
    uuids = parse_uuids(request.GET.getlist("uuid"))
    if request.GET.getlist("uuid") and not uuids:
        return JsonResponse({"count": 0, "page": 1, "num_pages": 1, "page_size": 0, "results": []})
    page = paginate(request, user_tasks(request.user, filter_name, uuids), app_settings.PAGE_SIZE)
    return JsonResponse(
        {
            "count": page.paginator.count,
            "page": page.number,
            "num_pages": page.paginator.num_pages,
            "page_size": page.paginator.per_page,
            "results": [task_summary(s) for s in page.object_list],
        }
    )


@require_http_methods(["GET", "DELETE"])
def task_detail_view(request, uuid):
    status = get_visible(request.user, uuid)
    if request.method == "DELETE":
        return _delete(request, status)
    return JsonResponse(task_detail(status, request.user))


@require_POST
def task_cancel(request, uuid):
    status = get_visible(request.user, uuid)
    if not get_policy().can_cancel(request.user, status):
        return _error(403, _("You may not cancel this task."))
    if not status.cancel(by=request.user):
        return _error(409, _("The task has already finished."))
    status.refresh_from_db()
    return JsonResponse(task_detail(status, request.user))


def _delete(request, status):
    if not get_policy().can_delete(request.user, status):
        return _error(403, _("You may not delete this task."))
    if not status.delete_with_files():
        return _error(409, _("Only finished tasks can be deleted."))
    return HttpResponse(status=204)


@require_POST
def task_delete(request, uuid):
    return _delete(request, get_visible(request.user, uuid))


@require_POST
def task_rerun(request, uuid):
    """Start a finished task again: 201 with the new task (200 with the identical active task
    a unique task joined), 403 without ``can_rerun``, 409 when it cannot run again."""
    status = get_visible(request.user, uuid)
    if not may_rerun(get_policy(), request.user, status):
        return _error(403, _("You may not run this task again."))
    try:
        new = status.rerun(by=request.user)
    except RerunError as exc:
        return _error(409, exc)
    except EnqueueError as exc:
        return _error(503, exc)
    response = JsonResponse(task_detail(new, request.user), status=201 if new.rerun_of_id == status.pk else 200)
    response["Location"] = reverse("usertasks:api-detail", args=[new.uuid])
    return response


@require_GET
def task_events(request, uuid):
    """Server-sent events: one ``status`` event (the detail JSON) per change."""
    from .views import live

    status = get_visible(request.user, uuid)
    return live.event_stream(request, status, lambda s: json.dumps(task_detail(s, request.user)))
