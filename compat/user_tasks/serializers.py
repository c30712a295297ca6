"""Django REST framework serializers of the ``user_tasks`` REST API."""

from rest_framework import serializers

from .models import UserTaskArtifact, UserTaskStatus


class StatusSerializer(serializers.HyperlinkedModelSerializer):
    """A task status: name, state, progress, times and links to its artifacts."""

    state_text = serializers.CharField(read_only=True)
    artifacts = serializers.HyperlinkedRelatedField(
        many=True, read_only=True, view_name="usertaskartifact-detail", lookup_field="uuid"
    )

    class Meta:
        model = UserTaskStatus
        fields = (
            "name",
            "state",
            "state_text",
            "completed_steps",
            "total_steps",
            "attempts",
            "created",
            "modified",
            "artifacts",
        )


class ArtifactSerializer(serializers.HyperlinkedModelSerializer):
    """An artifact: name, times, link to its task, and its file URL, text or URL."""

    status = serializers.HyperlinkedRelatedField(read_only=True, view_name="usertaskstatus-detail", lookup_field="uuid")
    file = serializers.SerializerMethodField()

    class Meta:
        model = UserTaskArtifact
        fields = ("name", "created", "modified", "status", "file", "text", "url")

    def get_file(self, obj):
        """URL of the stored file ('' when the artifact is not a file)."""
        if not obj.file:
            return ""
        return obj.file.url
