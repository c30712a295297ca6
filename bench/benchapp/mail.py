"""An email backend for the benchmarks: builds each message as an SMTP backend would (the whole
MIME document, as bytes), then drops it, so a long run keeps no email in memory."""

from django.core.mail.backends.base import BaseEmailBackend


class DiscardingBackend(BaseEmailBackend):
    def send_messages(self, email_messages):
        n = 0
        for message in email_messages:
            message.message().as_bytes()
            n += 1
        return n
