"""URLs of the benchmark settings: the status pages, so that notifications can link to them."""

from django.conf import settings
from django.urls import include, path

urlpatterns = [path("tasks/", include("usertasks.urls"))] if "usertasks" in settings.INSTALLED_APPS else []
