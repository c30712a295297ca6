"""``path("tasks/", include("usertasks.urls"))``; URL names under the ``usertasks`` namespace."""

from django.urls import path, re_path

from . import api, views
from .views.metrics import metrics

app_name = "usertasks"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("<uuid:uuid>/", views.status_page, name="status"),
    path("<uuid:uuid>/cancel/", views.cancel, name="cancel"),
    path("<uuid:uuid>/delete/", views.delete, name="delete"),
    path("<uuid:uuid>/rerun/", views.rerun, name="rerun"),
    path("artifacts/<uuid:uuid>/", views.artifact, name="artifact"),
    path("metrics/", metrics, name="metrics"),
    path("api/tasks/", api.task_list, name="api-list"),
    path("api/tasks/<uuid:uuid>/", api.task_detail_view, name="api-detail"),
    path("api/tasks/<uuid:uuid>/cancel/", api.task_cancel, name="api-cancel"),
    path("api/tasks/<uuid:uuid>/delete/", api.task_delete, name="api-delete"),
    path("api/tasks/<uuid:uuid>/rerun/", api.task_rerun, name="api-rerun"),
    path("api/tasks/<uuid:uuid>/events/", api.task_events, name="api-events"),
    re_path(r"^api/(?P<path>.*)$", api.not_found, name="api_not_found"),  # JSON 404, not Django's page
]
