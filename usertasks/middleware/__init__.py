"""Dramatiq middleware of usertasks, one concern per module."""

from .abort import UserTaskAbort
from .tracking import UserTaskTracking

__all__ = ["UserTaskAbort", "UserTaskTracking"]
