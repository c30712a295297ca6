from django.contrib import admin
from django.urls import include, path

from demo.urls import demo_patterns

urlpatterns = [
    path("admin/", admin.site.urls),
    path("tasks/", include("usertasks.urls")),
    *demo_patterns,
]
