"""The result handle: what became of an ``EmailMessage`` handed to the backend.

After ``send_messages()`` (``send_mail()``, ``msg.send()``), each message the backend took
carries ``msg.reliable_mail_status``, like django-anymail's ``anymail_status``::

    msg.send()
    msg.reliable_mail_status.id       # the OutboundMessage's primary key
    msg.reliable_mail_status.status   # "queued", then (immediate mode) "sent", "retrying" …

In immediate mode the status is brought up to date once the first attempt, made after the
commit, is recorded; inside a transaction it stays ``queued`` until then. A message whose
idempotency key was already stored gets that message's id and status, with ``duplicate``
set. A message without recipients is skipped and gets no handle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ATTRIBUTE", "SendStatus", "set_status", "status_of"]

ATTRIBUTE = "reliable_mail_status"


@dataclass
class SendStatus:
    #: The stored ``OutboundMessage``'s primary key.
    id: int
    #: Its status when last looked at (an ``OutboundMessage.Status`` value).
    status: str
    provider: str
    #: The idempotency key was already stored: this is that message, not a new one.
    duplicate: bool = False

    @property
    def message(self) -> Any:
        """The stored ``OutboundMessage`` (a query)."""
        from .models import OutboundMessage

        return OutboundMessage.objects.get(pk=self.id)


def set_status(message: Any, status: SendStatus) -> None:
    try:
        setattr(message, ATTRIBUTE, status)
    except Exception:  # an object that takes no attributes: the count still tells
        pass


def status_of(message: Any) -> SendStatus | None:
    status = getattr(message, ATTRIBUTE, None)
    return status if isinstance(status, SendStatus) else None
