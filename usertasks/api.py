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

The API uses the session (and its CSRF protection for POST and DELETE), like the pages.  Every
error is JSON, ``{"detail": "..."}``: 400, 403 (also a failed CSRF check), 404 (also a path under
``api/`` that names nothing), 405 (with ``Allow``), 409; never Django's HTML error pages.
"""

import functools
import json
import uuid as uuid_lib

from django.conf import settings
from django.core.paginator import EmptyPage, PageNotAnInteger, Paginator
from django.http import Http404, HttpResponse, HttpResponsePermanentRedirect, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import Resolver404, resolve, reverse
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt

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


class _CsrfCheck(CsrfViewMiddleware):
    """Django's own CSRF check, answering the reason of a refusal instead of its HTML page."""

    def _reject(self, request, reason):
        return reason


def _csrf_protected_view(request):  # what the check is asked about: a view with no exemption
    return HttpResponse()


def _csrf_refusal(request):
    """``None`` when ``request`` passes Django's CSRF check, else the reason it does not."""
    check = _CsrfCheck(lambda r: HttpResponse())
    check.process_request(request)
    return check.process_view(request, _csrf_protected_view, (), {})


def api_view(*methods):
    """The API's view decorator: only ``methods`` (else a JSON 405 with ``Allow``), Django's CSRF
    check for the unsafe methods (a JSON 403 when it fails), and a JSON 404 for
    :class:`Http404` (a task the user may not see, anonymous users included)."""
    allowed = [m.upper() for m in methods]

    def decorator(view):
        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.method not in allowed:
                response = _error(405, _("Method %(method)s is not allowed here.") % {"method": request.method})
                response["Allow"] = ", ".join(allowed)
                return response
            if request.method not in ("GET", "HEAD", "OPTIONS", "TRACE"):
                reason = _csrf_refusal(request)
                if reason is not None:
                    return _error(403, _("CSRF check failed: %(reason)s") % {"reason": reason})
            try:
                return view(request, *args, **kwargs)
            except Http404:
                return _error(404, _("No such task."))

        return csrf_exempt(wrapper)

    return decorator


@csrf_exempt  # it changes nothing: any method gets its JSON 404, never the CSRF page
def not_found(request, path=""):
    """A path under ``api/`` that names nothing: a JSON 404 (never Django's page, which lists
    the URL patterns when ``DEBUG`` is on).  A GET of an API path without its final slash is
    redirected to it, as ``APPEND_SLASH`` would have done."""
    if not request.path_info.endswith("/") and getattr(settings, "APPEND_SLASH", True):
        try:
            match = resolve(request.path_info + "/")
        except Resolver404:
            match = None
        if match is not None and match.func is not not_found:
            if request.method in ("GET", "HEAD"):
                return HttpResponsePermanentRedirect(request.get_full_path(force_append_slash=True))
            return _error(404, _("Not found: this URL ends with a slash."))
    return _error(404, _("Not found."))


def _query_int(request, name, default, low, high=None):
    """An integer query parameter within ``[low, high]``; :class:`ValueError` with the reason."""
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(_("%(name)s must be an integer.") % {"name": name}) from None
    if value < low or (high is not None and value > high):
        if high is None:
            raise ValueError(_("%(name)s must be at least %(low)d.") % {"name": name, "low": low})
        raise ValueError(_("%(name)s must be between %(low)d and %(high)d.") % {"name": name, "low": low, "high": high})
    return value


@api_view("GET")
def task_list(request):
    if not request.user.is_authenticated:
        return _error(403, _("Authentication required."))
    filter_name = request.GET.get("filter") or ""
    if filter_name and filter_name not in FILTERS:
        return _error(400, _("Unknown filter."))
    try:
        number = _query_int(request, "page", 1, 1)
        size = _query_int(request, "page_size", None, 1, MAX_PAGE_SIZE)
    except ValueError as error:
        return _error(400, error)
    raw_uuids = request.GET.getlist("uuid")
    if len(raw_uuids) > MAX_PAGE_SIZE:
        return _error(400, _("At most %(n)d uuid parameters.") % {"n": MAX_PAGE_SIZE})
    uuids = parse_uuids(raw_uuids)
    if len(uuids) != len(raw_uuids):
        return _error(400, _("uuid must be a UUID."))
    size = size or max(1, min(int(app_settings.PAGE_SIZE), MAX_PAGE_SIZE))
    paginator = Paginator(user_tasks(request.user, filter_name, uuids), size)
    page = paginator.page(min(number, paginator.num_pages))
    return JsonResponse(
        {
            "count": page.paginator.count,
            "page": page.number,
            "num_pages": page.paginator.num_pages,
            "page_size": page.paginator.per_page,
            "results": [task_summary(s) for s in page.object_list],
        }
    )


@api_view("GET", "DELETE")
def task_detail_view(request, uuid):
    status = get_visible(request.user, uuid)
    if request.method == "DELETE":
        return _delete(request, status)
    return JsonResponse(task_detail(status, request.user))


@api_view("POST")
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


@api_view("POST")
def task_delete(request, uuid):
    return _delete(request, get_visible(request.user, uuid))


@api_view("POST")
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


@api_view("GET")
def task_events(request, uuid):
    """Server-sent events: one ``status`` event (the detail JSON) per change."""
    from .views import live

    status = get_visible(request.user, uuid)
    return live.event_stream(request, status, lambda s: json.dumps(task_detail(s, request.user)))
