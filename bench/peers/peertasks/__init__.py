"""Celery user tasks of the baseline."""
