"""Dramatiq middleware of usertasks, one concern per module."""

from .tracking import UserTaskTracking

__all__ = ["UserTaskTracking"]
