from django.db import models


class Row(models.Model):
    """One row per task of the ``orm`` variant."""

    n = models.IntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)
