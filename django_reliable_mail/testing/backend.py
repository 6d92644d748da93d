"""A test backend for your own tests: everything but the database and the network.

Django's test set-up swaps the configured backend for locmem, which accepts anything: a typo
in ``msg.reliable_mail``, an unknown provider or an address that could never be sent all
pass under test and fail in production. This backend runs what ours runs before a message
is stored (the settings, the per-message options, the addresses and headers, the MIME
serialization, the choice of provider) and records what would be sent, instead of storing
it: the envelope, the options, the exact bytes and the provider.

Invariant: a message this backend records is one the real backend would store, and one it
refuses the real backend refuses too, with the same exception. It writes nothing and
connects to nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.core import mail

from .. import delivery
from ..backends import EmailBackend as _RealBackend
from ..options import DeliveryOptions
from ..status import SendStatus, set_status

__all__ = ["EmailBackend", "Outbox", "RecordedMessage", "outbox"]


@dataclass(frozen=True)
class RecordedMessage:
    """One message as the real backend would have stored it."""

    #: The ``EmailMessage`` handed to the backend.
    message: Any
    provider: str
    sender: str
    recipients: tuple[str, ...]
    #: The exact bytes that DATA would carry.
    data: bytes
    subject: str
    options: DeliveryOptions
    #: The backend's own arguments (``get_connection(host=…)``, a MAILERS entry's OPTIONS).
    backend_options: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


class Outbox:
    """What the test backend recorded, with assertion helpers. Thread-safe."""

    def __init__(self) -> None:
        self._messages: list[RecordedMessage] = []
        self._lock = threading.Lock()

    @property
    def messages(self) -> list[RecordedMessage]:
        with self._lock:
            return list(self._messages)

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self):
        return iter(self.messages)

    def record(self, message: RecordedMessage) -> None:
        with self._lock:
            self._messages.append(message)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def matching(self, **criteria: Any) -> list[RecordedMessage]:
        """Messages matching every criterion: ``to`` (an address among the recipients),
        ``subject``, ``provider``, ``sender``, ``tag``, or any per-message option by name
        (``require_tls=True``)."""
        return [m for m in self.messages if _matches(m, criteria)]

    def assert_sent(self, count: int | None = None, **criteria: Any) -> list[RecordedMessage]:
        """Assert that messages matching ``criteria`` were sent (``count`` of them, if
        given); returns them. The failure lists what was sent instead."""
        found = self.matching(**criteria)
        if (count is None and not found) or (count is not None and len(found) != count):
            wanted = "some" if count is None else str(count)
            raise AssertionError(
                f"expected {wanted} message(s) matching {criteria!r}, found {len(found)}; "
                f"sent: {self._summary()}"
            )
        return found

    def assert_one(self, **criteria: Any) -> RecordedMessage:
        """Assert that exactly one message matches; return it."""
        return self.assert_sent(1, **criteria)[0]

    def assert_nothing_sent(self) -> None:
        if self.messages:
            raise AssertionError(f"expected no message, sent: {self._summary()}")

    def _summary(self) -> str:
        shown = [f"{m.subject!r} to {', '.join(m.recipients)} via {m.provider}" for m in self]
        return "; ".join(shown) or "nothing"


def _matches(message: RecordedMessage, criteria: dict[str, Any]) -> bool:
    for name, wanted in criteria.items():
        if name == "to":
            if wanted not in message.recipients:
                return False
        elif name == "tag":
            if wanted not in message.options.tags:
                return False
        elif name in ("subject", "provider", "sender"):
            if getattr(message, name) != wanted:
                return False
        elif not hasattr(message.options, name):
            raise TypeError(f"unknown criterion {name!r}")
        elif getattr(message.options, name) != wanted:
            return False
    return True


#: Everything the test backend recorded, in this process.
outbox = Outbox()


class EmailBackend(_RealBackend):
    """The real backend's checks, recorded instead of stored and sent.

    ``EMAIL_BACKEND = "django_reliable_mail.testing.EmailBackend"`` (or a MAILERS entry's
    BACKEND). Takes the same arguments as the real backend, and refuses what it refuses.
    Each message recorded also goes to ``django.core.mail.outbox`` when Django's test set-up
    made one, so ``mail.outbox`` assertions keep working, and gets ``reliable_mail_status``
    (``id`` 0, status ``"recorded"``).
    """

    def open(self) -> bool:
        return False

    def close(self) -> None:
        return None

    def send_messages(self, email_messages: Iterable[Any]) -> int:
        messages = list(email_messages or ())
        if not messages:
            return 0
        prepared = delivery.validate(
            messages,
            config=self.config,
            provider=self.provider if self._provider_given else None,
            fail_silently=self.fail_silently,
        )
        django_outbox = getattr(mail, "outbox", None)
        for item in prepared:
            serialized = item.serialized
            outbox.record(
                RecordedMessage(
                    message=item.message,
                    provider=item.provider,
                    sender=serialized.from_email,
                    recipients=tuple(serialized.recipients),
                    data=serialized.data,
                    subject=serialized.subject,
                    options=item.options,
                    backend_options=dict(self._arguments),
                )
            )
            set_status(item.message, SendStatus(0, "recorded", item.provider))
            if isinstance(django_outbox, list):
                django_outbox.append(item.message)
        return len(prepared)
