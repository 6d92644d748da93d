"""The MIME bytes of a plain-text ``EmailMessage``, written directly.

Most transactional mail (password resets, receipts) is one text part with ASCII headers.
Django builds such a message through the stdlib ``email`` package, whose header folding
and generator cost ~0.15 ms a message, about as much as storing it. For that common shape
we write the same headers and a body in 7bit (ASCII, short lines) or quoted-printable
(anything else) ourselves. Any message outside the shape (attachments, HTML, a subclass,
headers that need encoding or folding, unusual addresses) returns ``None`` and goes
through Django, so the output never differs in meaning from Django's.
"""

from __future__ import annotations

import binascii
import re
from email.utils import formatdate

import django
from django.conf import settings
from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.core.mail.message import make_msgid
from django.core.mail.utils import DNS_NAME

# A header line must fit in 78 characters to need no folding (RFC 5322 2.1.1).
_MAX_HEADER_LINE = 78
_PRINTABLE = re.compile(r"[\x20-\x7e]*\Z")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# RFC 5321 4.1.2 Domain: labels of letters, digits and inner hyphens, at most 63 each.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@{_DOMAIN}"
DOMAIN = re.compile(rf"{_DOMAIN}\Z")
# A bare address, or a display name of letters, digits and single spaces before it.
BARE_ADDRESS = re.compile(rf"{_ADDR_SPEC}\Z")
_SIMPLE_ADDRESS = re.compile(rf"(?:{_ADDR_SPEC}|[A-Za-z0-9]+(?: [A-Za-z0-9]+)* <{_ADDR_SPEC}>)\Z")
# Extra headers Django itself treats specially (it lets them replace its own).
_OWN_HEADERS = {"from", "to", "cc", "reply-to", "date", "message-id", "subject", "bcc"}
_HEADER_NAME = re.compile(r"[!-9;-~]+\Z")  # RFC 5322 ftext
_MAX_BODY_LINE = 998


def plain_message_bytes(message: EmailMessage) -> tuple[bytes, str] | None:
    """``(bytes, Message-ID)`` for a plain-text message of the common shape, else ``None``."""
    if (
        type(message) not in (EmailMessage, EmailMultiAlternatives)
        or getattr(message, "alternatives", None)
        or message.attachments
        or message.content_subtype != "plain"
        or getattr(message, "encoding", None)
        or str(settings.DEFAULT_CHARSET).lower() not in ("utf-8", "utf8")
        or not isinstance(message.body, str)
        # Django 6's email policy chooses between 8bit, quoted-printable and base64 by
        # which comes out shorter: only an ASCII body is written here the same way.
        or (django.VERSION >= (6, 0) and not _is_7bit(message.body))
    ):
        return None
    headers: list[tuple[str, str]] = []
    subject = message.subject
    if not isinstance(subject, str) or not _PRINTABLE.match(subject):
        return None
    extra = {str(k): v for k, v in (message.extra_headers or {}).items()}
    if any(
        k.lower() in _OWN_HEADERS
        or not _HEADER_NAME.match(k)
        or not isinstance(v, str)
        or not _PRINTABLE.match(v)
        for k, v in extra.items()
    ):
        return None
    from_email = message.from_email
    addresses = {
        "From": [from_email],
        "To": list(message.to),
        "Cc": list(message.cc),
        "Reply-To": list(message.reply_to),
    }
    if not all(
        isinstance(a, str) and _SIMPLE_ADDRESS.match(a) for v in addresses.values() for a in v
    ):
        return None
    message_id = make_msgid(domain=DNS_NAME)
    headers.append(("Subject", subject))
    for name, values in addresses.items():
        if values:
            headers.append((name, ", ".join(values)))
    headers.append(("Date", _date()))
    headers.append(("Message-ID", message_id))
    headers.extend(extra.items())
    if any(len(name) + 2 + len(value) > _MAX_HEADER_LINE for name, value in headers):
        return None
    body, encoding = _body(message.body)
    head = [
        'Content-Type: text/plain; charset="utf-8"',
        "MIME-Version: 1.0",
        f"Content-Transfer-Encoding: {encoding}",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body, message_id


def _date() -> str:
    return formatdate(localtime=getattr(settings, "EMAIL_USE_LOCALTIME", False))


def _is_7bit(text: str) -> bool:
    lines = text.replace("\r\n", "\n").replace("\r", "\n")
    return lines.isascii() and all(len(line) <= _MAX_BODY_LINE for line in lines.split("\n"))


def _body(text: str) -> tuple[bytes, str]:
    lines = text.replace("\r\n", "\n").replace("\r", "\n")
    if _is_7bit(lines):
        data, encoding = lines.encode("ascii"), "7bit"
    else:
        data = binascii.b2a_qp(lines.encode("utf-8"), quotetabs=False, istext=True, header=False)
        encoding = "quoted-printable"
    data = data.replace(b"\n", b"\r\n")
    # An empty body stays empty, as Django 5.2 writes it (DATA then ends with the blank line
    # after the headers); any other body ends with a line break, as DATA needs.
    return (data if not data or data.endswith(b"\r\n") else data + b"\r\n"), encoding
