"""REST API of ``user_tasks``: task statuses (list, detail, cancel, delete) and artifacts.

Access goes through Django object permissions (``user_tasks.view_usertaskstatus``,
``cancel_usertaskstatus``, ...; see ``user_tasks.rules.add_rules``) and the
``USER_TASKS_STATUS_FILTERS`` / ``USER_TASKS_ARTIFACT_FILTERS`` listing filters, both read on
every request.
"""

from rest_framework import mixins, permissions, viewsets
from rest_framework import status as http
from rest_framework.decorators import action
from rest_framework.response import Response

from .conf import settings
from .models import UserTaskArtifact, UserTaskStatus
from .serializers import ArtifactSerializer, StatusSerializer


class DjangoObjectPermissionsIncludingView(permissions.DjangoObjectPermissions):
    """Object permissions that also require ``view_<model>`` to read, and
    ``cancel_<model>`` to POST (cancel)."""

    perms_map = {
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
        "POST": ["%(app_label)s.cancel_%(model_name)s"],
        "PUT": ["%(app_label)s.change_%(model_name)s"],
        "PATCH": ["%(app_label)s.change_%(model_name)s"],
        "DELETE": ["%(app_label)s.delete_%(model_name)s"],
    }


class StatusViewSet(
    mixins.DestroyModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Tasks: list, view, cancel (POST ``<uuid>/cancel/``) and delete."""

    lookup_field = "uuid"
    permission_classes = (DjangoObjectPermissionsIncludingView,)
    queryset = UserTaskStatus.objects.order_by("-created")
    serializer_class = StatusSerializer

    @property
    def filter_backends(self):
        return settings.USER_TASKS_STATUS_FILTERS

    @action(detail=True, methods=["post"])
    def cancel(self, request, *args, **kwargs):
        """Cancel the task; answers with its status."""
        status = self.get_object()
        status.cancel(by=request.user)
        return Response(StatusSerializer(status, context={"request": request}).data)

    def destroy(self, request, *args, **kwargs):
        """Delete the task with its artifacts and files.  An active task is canceled first: one
        that had not started is then deleted at once; a running one is asked to stop, and the
        answer is 409 until it has (its worker may still write to it); DELETE again then."""
        status = self.get_object()
        if status.is_active:
            status.cancel(by=request.user)
        if not status.delete_with_files():
            return Response(
                {"detail": "The task is stopping; delete it once it has ended."}, status=http.HTTP_409_CONFLICT
            )
        return Response(status=http.HTTP_204_NO_CONTENT)


class ArtifactViewSet(viewsets.ReadOnlyModelViewSet):
    """Artifacts: list and view."""

    lookup_field = "uuid"
    permission_classes = (DjangoObjectPermissionsIncludingView,)
    queryset = UserTaskArtifact.objects.order_by("created", "id")
    serializer_class = ArtifactSerializer

    @property
    def filter_backends(self):
        return settings.USER_TASKS_ARTIFACT_FILTERS
