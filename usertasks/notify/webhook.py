"""The webhook channel: a signed JSON POST to ``USERTASKS["WEBHOOK_URL"]``."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from ..conf import app_settings
from .channels import Channel, Notice

SIGNATURE_HEADER = "X-Usertasks-Signature"
DELIVERY_HEADER = "X-Usertasks-Delivery"


class WebhookError(Exception):
    """The webhook's endpoint did not accept the notification."""


def sign(body: bytes, secret: str | bytes) -> str:
    """The value of the ``X-Usertasks-Signature`` header for ``body``: ``sha256=`` and the
    hex HMAC-SHA256 of the body with ``secret``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str, secret: str | bytes) -> bool:
    """Whether ``header`` (an ``X-Usertasks-Signature``) signs ``body`` with ``secret``; for
    receivers written in Python."""
    return hmac.compare_digest(sign(body, secret), header or "")


def payload(notice: Notice) -> dict[str, Any]:
    """The JSON document of a notice."""
    status = notice.status
    user = status.user
    base = (app_settings.BASE_URL or "").rstrip("/")
    return {
        "delivery": notice.id,
        "attempt": notice.attempt,
        "sent": timezone.now().isoformat(),
        "task": {
            "uuid": str(status.uuid),
            "name": status.name,
            "actor": status.task_class,
            "state": notice.state,
            "user": user.get_username() if user is not None else None,
            "link": notice.link,
            "created": status.created.isoformat() if status.created else None,
            "finished": status.finished.isoformat() if getattr(status, "finished", None) else None,
            "error": status.error or "",
            "completed_steps": status.completed_steps,
            "total_steps": status.total_steps,
            "artifacts": [{"name": a.name, "link": base + a.get_absolute_url()} for a in notice.artifacts],
        },
    }


class WebhookChannel(Channel):
    """POSTs each notice as JSON (:func:`payload`) to ``USERTASKS["WEBHOOK_URL"]`` (http or
    https), signed with HMAC-SHA256 over the body with ``USERTASKS["WEBHOOK_SECRET"]``
    (header ``X-Usertasks-Signature: sha256=<hex>``; ``X-Usertasks-Delivery`` carries the
    notice's id, the same on every attempt).  Waits at most ``WEBHOOK_CONNECT_TIMEOUT`` seconds
    to connect and ``WEBHOOK_READ_TIMEOUT`` for each read of the answer.  Any answer but a
    2xx, a redirect included (redirects are not followed), is a failure and is retried."""

    label = "webhook"

    def __init__(self) -> None:
        url = app_settings.WEBHOOK_URL
        secret = app_settings.WEBHOOK_SECRET
        if not url or not secret:
            raise ImproperlyConfigured('The webhook channel needs USERTASKS["WEBHOOK_URL"] and ["WEBHOOK_SECRET"].')
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImproperlyConfigured(f'USERTASKS["WEBHOOK_URL"] is not an http(s) URL: {url!r}')
        self.parts = parts
        self.secret = secret
        self.connect_timeout = float(app_settings.WEBHOOK_CONNECT_TIMEOUT)
        self.read_timeout = float(app_settings.WEBHOOK_READ_TIMEOUT)

    def send(self, notice: Notice) -> None:
        body = json.dumps(payload(notice), separators=(",", ":")).encode()
        parts = self.parts
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=self.connect_timeout)
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(self.read_timeout)
            conn.request(
                "POST",
                path,
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "usertasks-webhook",
                    SIGNATURE_HEADER: sign(body, self.secret),
                    DELIVERY_HEADER: str(notice.id),
                },
            )
            response = conn.getresponse()
            response.read(65536)
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise WebhookError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()
        if not 200 <= response.status < 300:
            raise WebhookError(f"HTTP {response.status} {response.reason}".strip())
