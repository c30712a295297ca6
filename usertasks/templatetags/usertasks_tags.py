"""Template helpers for the usertasks pages: ``{% load usertasks_tags %}``."""

from django import template
from django.utils.translation import gettext as _

register = template.Library()


@register.filter
def duration(value):
    """A ``timedelta`` (or seconds) as "1 h 2 min", "3 min 4 s", "5 s"; "" for ``None``."""
    if value is None or value == "":
        return ""
    seconds = round(value.total_seconds() if hasattr(value, "total_seconds") else float(value))
    seconds = max(0, seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return _("%(h)d h %(m)d min") % {"h": hours, "m": minutes}
    if minutes:
        return _("%(m)d min %(s)d s") % {"m": minutes, "s": secs}
    return _("%(s)d s") % {"s": secs}


@register.filter
def percent_text(value):
    return "" if value is None else f"{value:.0f}%"


@register.inclusion_tag("usertasks/includes/progress.html")
def usertasks_progress(task, compact=False):
    percent = task.percent
    return {"task": task, "percent": percent, "width": 0 if percent is None else round(percent, 1), "compact": compact}
