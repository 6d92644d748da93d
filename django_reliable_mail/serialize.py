"""EmailMessage → the exact bytes and envelope we store and later send."""

from __future__ import annotations

import email.policy
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any

import django
from django.core.mail import EmailMessage

from .exceptions import InvalidMessageError
from .plain_mime import BARE_ADDRESS, plain_message_bytes
from .smtp.transport import wire_format


@dataclass(frozen=True)
class SerializedMessage:
    from_email: str
    recipients: list[str]
    data: bytes
    subject: str
    message_id: str


def envelope_address(value: Any, *, role: str) -> str:
    """The addr-spec of ``value`` (which may be ``"Name <a@b>"``), IDNA-encoding the domain.

    A non-ASCII local part is kept as it is (it needs SMTPUTF8 at send time).
    """
    text = str(value or "")
    if BARE_ADDRESS.match(text):  # the common case, without the parser
        return _within_limit(text, role)
    if "\r" in text or "\n" in text:
        raise InvalidMessageError(f"The {role} address {text!r} contains a line break.")
    parsed = getaddresses([text])
    if len(parsed) != 1 or not parsed[0][1]:
        raise InvalidMessageError(f"The {role} address {text!r} is not a single email address.")
    spec = parsed[0][1]
    local, at, domain = spec.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in spec) or "<" in spec:
        raise InvalidMessageError(f"The {role} address {text!r} is not a valid email address.")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidMessageError(
                f"The {role} address {text!r} has a domain that cannot be encoded: {exc}."
            ) from exc
    return _within_limit(f"{local}@{domain}", role)


#: The longest address stored (the envelope columns' length). RFC 5321 paths are shorter,
#: but some real addresses (SRS, VERP) go past its 64-octet local part.
MAX_ADDRESS_LENGTH = 320


def _within_limit(address: str, role: str) -> str:
    if len(address) > MAX_ADDRESS_LENGTH:
        raise InvalidMessageError(
            f"The {role} address {address[:40]!r}… is {len(address)} characters long; "
            f"at most {MAX_ADDRESS_LENGTH} are accepted."
        )
    return address


def serialize(message: EmailMessage) -> SerializedMessage:
    """Validate and flatten one message; raises :class:`InvalidMessageError`."""
    try:
        recipients = message.recipients()
    except Exception as exc:  # a broken to/cc/bcc value
        raise InvalidMessageError(f"The message's recipients cannot be read: {exc}") from exc
    if not recipients:
        raise InvalidMessageError("The message has no recipients: to, cc and bcc are all empty.")
    from_email = envelope_address(message.from_email, role="sender (from_email)")
    envelope_recipients = list(
        dict.fromkeys(envelope_address(r, role="recipient") for r in recipients)
    )
    data, message_id = plain_message_bytes(message) or _django_mime(message)
    return SerializedMessage(
        from_email=from_email,
        recipients=envelope_recipients,
        data=wire_format(data),
        subject=str(message.subject or "")[:998],
        message_id=message_id[:998],
    )


def _django_mime(message: EmailMessage) -> tuple[bytes, str]:
    """Django's own MIME for the message, and its Message-ID."""
    try:
        if django.VERSION >= (6, 0):
            mime = message.message(policy=email.policy.SMTP)
            data = mime.as_bytes()
        else:
            mime = message.message()
            data = mime.as_bytes(linesep="\r\n")
    except InvalidMessageError:
        raise
    except Exception as exc:
        raise InvalidMessageError(
            f"The message cannot be serialized to MIME: {type(exc).__name__}: {exc}"
        ) from exc
    return data, str(mime.get("Message-ID", "") or "")
