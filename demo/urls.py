from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from . import views

demo_patterns = [
    path("", views.home, name="demo-home"),
    path("start/<slug:key>/", views.start, name="demo-start"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("tasks/", include("usertasks.urls")),
    *demo_patterns,
]
