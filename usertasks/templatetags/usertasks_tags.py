"""Template helpers for the usertasks pages: ``{% load usertasks_tags %}``."""

import datetime

from django import template
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.translation import get_language_bidi
from django.utils.translation import gettext as _

from ..text import first_line, isolate, needs_isolation

register = template.Library()

ERROR_SUMMARY_CHARS = 200


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


@register.filter(name="isolate")
def isolate_filter(value):
    """User text for plain-text output (emails, ``<title>``): between Unicode isolates
    (U+2068 ... U+2069), so a right-to-left name cannot reorder the words around it.  Text
    that cannot reorder anything (left-to-right text in a left-to-right language) is left as
    it is, free of invisible characters."""
    return isolate(value) if needs_isolation(value, get_language_bidi()) else ("" if value is None else str(value))


@register.filter
def bdi(value):
    """User text for HTML where a translated sentence embeds it: ``<bdi>text</bdi>`` (escaped)."""
    return format_html("<bdi>{}</bdi>", "" if value is None else value)


def _as_datetime(value):
    if isinstance(value, str):
        value = parse_datetime(value)
    if not isinstance(value, datetime.datetime):
        return None
    if timezone.is_naive(value):
        value = timezone.make_aware(value, datetime.timezone.utc)
    return value


def machine_time(value):
    """The ``datetime`` attribute of a ``<time>``: UTC, milliseconds, ``Z`` (a valid HTML
    global date and time string)."""
    utc = value.astimezone(datetime.timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def human_time(value):
    """The shown text: the active locale's ``DATETIME_FORMAT`` in the current time zone."""
    return date_format(timezone.localtime(value), "DATETIME_FORMAT")


@register.simple_tag
def usertasks_time(value, empty="–"):
    """``<time datetime="2026-12-04T06:55:50.775Z">Dec. 4, 2026, 6:55 a.m.</time>`` for a
    datetime or an ISO 8601 string; ``empty`` for ``None``.  The page script formats the same
    elements with ``Intl.DateTimeFormat`` in the page's language."""
    moment = _as_datetime(value)
    if moment is None:
        return empty
    return format_html('<time datetime="{}">{}</time>', machine_time(moment), human_time(moment))


@register.filter
def outcome(task):
    """What a finished task's row says instead of its last step message: "Succeeded in 3 s",
    "Failed: <the first line of the error>", "Canceled"; "" for an active task."""
    state = task.state
    if state == "Succeeded":
        took = duration(task.elapsed)
        return _("Succeeded in %(duration)s") % {"duration": took} if took else str(task.state_text)
    if state == "Failed":
        summary = first_line(task.error, ERROR_SUMMARY_CHARS)
        return _("Failed: %(error)s") % {"error": summary} if summary else str(task.state_text)
    if state == "Canceled":
        return str(task.state_text)
    return ""


@register.inclusion_tag("usertasks/includes/progress.html")
def usertasks_progress(task, compact=False):
    percent = task.percent
    return {"task": task, "percent": percent, "width": 0 if percent is None else round(percent, 1), "compact": compact}
