"""URLs of the compatibility tests: the usertasks pages, the django-user-tasks REST API, admin."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("tasks/", include("usertasks.urls")),
    path("api/user_tasks/", include("user_tasks.urls")),
]
