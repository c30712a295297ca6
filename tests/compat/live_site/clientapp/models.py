"""A project's own models that refer to django-user-tasks' status rows, as Open edX's do."""

from django.db import models


class CourseImport(models.Model):
    name = models.CharField(max_length=100)
    task = models.ForeignKey("user_tasks.UserTaskStatus", on_delete=models.CASCADE, related_name="+")


class LatestReport(models.Model):
    name = models.CharField(max_length=100)
    task = models.OneToOneField("user_tasks.UserTaskStatus", null=True, on_delete=models.SET_NULL, related_name="+")
