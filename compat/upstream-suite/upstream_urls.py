"""URLs of the upstream suite: the admin and django-user-tasks' REST API at the root."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("user_tasks.urls")),
]
