"""URLs of the ``user_tasks`` REST API: ``tasks/`` (``usertaskstatus-list``, ``-detail``,
``-cancel``) and ``artifacts/`` (``usertaskartifact-list``, ``-detail``)."""

from rest_framework.routers import SimpleRouter

from .views import ArtifactViewSet, StatusViewSet

ROUTER = SimpleRouter()
ROUTER.register(r"artifacts", ArtifactViewSet, basename="usertaskartifact")
ROUTER.register(r"tasks", StatusViewSet, basename="usertaskstatus")

urlpatterns = ROUTER.urls
