"""URLs of the compatibility tests: the usertasks pages and the django-user-tasks REST API."""

from django.urls import include, path

urlpatterns = [
    path("tasks/", include("usertasks.urls")),
    path("api/user_tasks/", include("user_tasks.urls")),
]
