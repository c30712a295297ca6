"""Django REST framework filter backends for the ``user_tasks`` REST API."""

from rest_framework.filters import BaseFilterBackend


class StatusFilterBackend(BaseFilterBackend):
    """Superusers see every task; other users only the tasks they started."""

    def filter_queryset(self, request, queryset, view):
        if request.user.is_superuser:
            return queryset
        return queryset.filter(user=request.user)


class ArtifactFilterBackend(BaseFilterBackend):
    """Superusers see every artifact; other users only those of the tasks they started."""

    def filter_queryset(self, request, queryset, view):
        if request.user.is_superuser:
            return queryset
        return queryset.filter(status__user=request.user)
