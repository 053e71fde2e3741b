"""Channel adapters behind one interface. Email goes over SMTP; SMS and WeChat use the
database-recording adapter unless a provider adapter is configured."""

from __future__ import annotations

from typing import Protocol

from django.conf import settings
from django.core.mail import send_mail
from django.utils.module_loading import import_string

from notifications.models import Channel, RecordedMessage


class ChannelAdapter(Protocol):
    def send(self, *, recipient: str, subject: str, body: str) -> str:
        """Deliver one message; return a provider reference. Raise on failure."""
        ...


class EmailAdapter:
    def send(self, *, recipient: str, subject: str, body: str) -> str:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [recipient])
        return "smtp"


class RecordingAdapter:
    def __init__(self, channel: str) -> None:
        self.channel = channel

    def send(self, *, recipient: str, subject: str, body: str) -> str:
        record = RecordedMessage.objects.create(channel=self.channel, recipient=recipient, body=body)
        return f"recorded:{record.pk}"


def adapter_for(channel: str) -> ChannelAdapter:
    configured = getattr(settings, "NOTIFICATION_ADAPTERS", {}).get(channel)
    if configured:
        adapter: ChannelAdapter = import_string(configured)()
        return adapter
    if channel == Channel.EMAIL:
        return EmailAdapter()
    return RecordingAdapter(channel)
