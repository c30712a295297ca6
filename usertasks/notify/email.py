"""The email channel: tells the requester by email (the default channel)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import get_template
from django.utils import translation

from ..states import State
from .channels import Channel, Notice, status_link

TEMPLATES = ("usertasks/email/finished_subject.txt", "usertasks/email/finished.txt", "usertasks/email/finished.html")


class EmailChannel(Channel):
    """An email to the task's user with its outcome, a link to its page and its artifacts
    (templates ``usertasks/email/finished_subject.txt``, ``finished.txt`` and
    ``finished.html``, loaded once per channel), in the user's language (a ``language``
    attribute of the user, else ``LANGUAGE_CODE``).  A user without an email address gets
    none."""

    label = "email"

    def __init__(self) -> None:
        self.subject, self.text, self.html = (get_template(name) for name in TEMPLATES)

    def send(self, notice: Notice) -> None:
        if getattr(notice.status.user, "email", ""):
            self.message(notice.status, notice.state, link=notice.link, artifacts=notice.artifacts).send()

    def message(
        self, status: Any, state: str | None = None, *, link: str | None = None, artifacts: list[Any] | None = None
    ) -> EmailMultiAlternatives:
        """The :class:`~django.core.mail.EmailMultiAlternatives` for ``status`` (not sent)."""
        user = status.user
        state = State(state or status.state)
        language = getattr(user, "language", None) or getattr(settings, "LANGUAGE_CODE", "en")
        with translation.override(language):
            context = {
                "task": status,
                "state": state,
                "state_text": state.label,
                "user": user,
                "link": link or status_link(status),
                "artifacts": list(status.artifacts.all()) if artifacts is None else artifacts,
            }
            subject = " ".join(self.subject.render(context).split())
            text = self.text.render(context)
            html = self.html.render(context)
        message = EmailMultiAlternatives(subject=subject, body=text, to=[user.email])
        message.attach_alternative(html, "text/html")
        return message
