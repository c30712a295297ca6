"""The ``metrics`` view: usertasks' Prometheus metrics, for superusers and for a bearer token.

It serves ``usertasks_tasks{state}`` (read from the database, one query per scrape) and, when
this process runs with ``PROMETHEUS_MULTIPROC_DIR`` set, what prometheus_client's processes on
this host wrote there (the workers' metrics, when they share the directory).  Anyone else gets
403; without prometheus_client, 501.  See docs/metrics.md.
"""

from __future__ import annotations

import hmac
import os

from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from ..conf import app_settings
from ..exceptions import ConfigurationError
from ..metrics import TasksByStateCollector, prometheus

__all__ = ["metrics"]


def allowed(request: HttpRequest) -> bool:
    """A superuser, or ``Authorization: Bearer <USERTASKS["METRICS_TOKEN"]>`` (compared in
    constant time)."""
    token = app_settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if (
        token
        and header[:7].lower() == "bearer "
        and hmac.compare_digest(header[7:].strip().encode(), str(token).encode())
    ):
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_superuser)


@never_cache
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    if not allowed(request):
        return HttpResponseForbidden("Forbidden", content_type="text/plain; charset=utf-8")
    try:
        prom = prometheus()
    except ConfigurationError as exc:
        return HttpResponse(str(exc), status=501, content_type="text/plain; charset=utf-8")
    registry = prom.CollectorRegistry(auto_describe=False)
    registry.register(TasksByStateCollector())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    return HttpResponse(prom.generate_latest(registry), content_type=prom.CONTENT_TYPE_LATEST)
