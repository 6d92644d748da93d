"""EmailMessage → the exact bytes and envelope we store and later send.

Invariant: a message that serializes can be sent as it is. Every envelope address is an
RFC 5321 mailbox, no header name or value can start a header of its own (those raise
:class:`HeaderInjectionError`, which is Django's ``BadHeaderError``), and the bytes are
Django's own MIME for the message (or, through ``plain_mime``, mean the same) with the body
exactly as given.
"""

from __future__ import annotations

import email.policy
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import django
from django.core.mail import EmailMessage

from .exceptions import HeaderInjectionError, InvalidMessageError
from .plain_mime import BARE_ADDRESS, DOMAIN, plain_message_bytes
from .smtp.transport import wire_format


@dataclass(frozen=True)
class SerializedMessage:
    from_email: str
    recipients: list[str]
    data: bytes
    subject: str
    message_id: str


#: Everything Python's ``str.splitlines()`` breaks at: the stdlib's header folding treats each
#: as a line break (Django 5.2), and Django 6's email policy refuses them as such.
_LINE_BREAK = re.compile("[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
#: Other characters no header may carry (RFC 5322 2.2: printable characters and WSP), and
#: lone surrogates, which cannot be encoded at all. Tab is WSP and stays allowed.
_FORBIDDEN = re.compile("[\x00-\x08\x0e-\x1b\x1f\x7f-\x9f\ud800-\udfff]")
_FIELD_NAME = re.compile(r"[!-9;-~]+\Z")  # RFC 5322 2.2 ftext
#: RFC 5322 atext (VCHAR without specials), widened by RFC 6531 to any non-ASCII character
#: that is not a space or a control (sent with SMTPUTF8).
_ATEXT = r'[^\s\x00-\x20\x7f-\x9f"(),.:;<>@\[\\\]]'
_DOT_STRING = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*\Z")
#: A local user without a domain: an ASCII dot-atom, nothing around it.
_LOCAL_USER = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
#: Characters of a display name that would make it more than a name (RFC 5322 specials that
#: only belong in an address; "." and "()" stay allowed, as in "John Q. Public (Sales)").
_DISPLAY_NAME_SPECIALS = re.compile(r"[<>@,;:\[\]\\]")
#: The longest address stored (the envelope columns' length). RFC 5321 paths are shorter,
#: but some real addresses (SRS, VERP) go past its 64-octet local part.
MAX_ADDRESS_LENGTH = 320


def envelope_address(value: Any, *, role: str) -> str:
    """The RFC 5321 mailbox of ``value`` (``"a@b"`` or ``"Name <a@b>"``) for the envelope.

    The local part is written in its shortest form: a quoted one (``"john doe"@example.com``)
    stays quoted, with only ``"`` and ``\\`` escaped; one that needs no quotes loses them
    (RFC 5322 3.4.1). A non-ASCII local part is kept as it is (it needs SMTPUTF8 when sent);
    a non-ASCII domain is IDNA-encoded; ``[192.0.2.1]`` and ``[IPv6:…]`` literals are kept
    (IPv6 in its compressed form). A dot-atom without any ``@`` (``tester``) is kept as it
    is, as Django's SMTP backend sends it: a local relay adds its own domain. Anything else
    raises :class:`InvalidMessageError` naming the role, the address and the reason (its
    message starts with "Invalid address", like Django's ``ValueError``); a line break
    :class:`HeaderInjectionError`.
    """
    text = str(value or "")
    if BARE_ADDRESS.match(text):  # the common case, without the parser
        return _within_limit(text, role)
    if _LOCAL_USER.match(text):
        # A local user ("tester"), sent as Django sends it, for a local relay to qualify.
        # Bare only: Django writes the header from the text as given.
        return _within_limit(text, role)
    try:
        _check_header_text(text, what=f"{role} address")
    except InvalidMessageError as exc:
        raise type(exc)(f"Invalid address: {exc}") from None
    local, domain = _split_addr_spec(_addr_spec(text, role), text, role)
    return _within_limit(f"{local}@{domain}", role)


def _invalid(text: str, role: str, reason: str) -> InvalidMessageError:
    return InvalidMessageError(
        f"Invalid address: the {role} address {text!r} is not a valid email address: {reason}."
    )


def _addr_spec(text: str, role: str) -> str:
    """The address of ``text`` without its display name: what is inside ``<…>`` if any."""
    stripped = text.strip()
    masked = _masked_quotes(stripped)
    if masked is None:
        raise _invalid(text, role, "a quoted string is not closed")
    if not masked.endswith(">"):
        return stripped
    opening = masked.find("<")
    if opening < 0 or "<" in masked[opening + 1 : -1] or ">" in masked[opening + 1 : -1]:
        raise _invalid(text, role, "its angle brackets do not enclose one address")
    special = _DISPLAY_NAME_SPECIALS.search(masked[:opening])
    if special:
        raise InvalidMessageError(
            f"Invalid address: the {role} address {text!r} is not a single email address: its "
            f"display name has {special.group()!r} outside quotes."
        )
    return stripped[opening + 1 : -1].strip()


def _masked_quotes(text: str) -> str | None:
    """``text`` with each quoted string's content (escapes included) replaced by ``_``, so
    that what is left shows the structure; ``None`` when a quoted string is not closed."""
    out = []
    quoted = escaped = False
    for char in text:
        if not quoted:
            quoted = char == '"'
            out.append(char)
        elif escaped:
            escaped = False
            out.append("_")
        elif char == "\\":
            escaped = True
            out.append("_")
        else:
            quoted = char != '"'
            out.append(char if char == '"' else "_")
    return None if quoted else "".join(out)


def _split_addr_spec(spec: str, text: str, role: str) -> tuple[str, str]:
    """``(local part, domain)`` of an addr-spec, each in its envelope form."""
    if spec.startswith('"'):
        content, rest = _quoted_string(spec, text, role)
        if not rest.startswith("@"):
            raise _invalid(text, role, "a quoted local part must be followed by '@'")
        local, domain = _shortest_local_part(content, text, role), rest[1:]
    else:
        local, at, domain = spec.partition("@")  # an unquoted local part has no "@"
        if not at:
            raise _invalid(text, role, "it has no '@'")
        if not _DOT_STRING.match(local):
            raise _invalid(
                text, role, 'its local part is not a dot-atom (quote it: "john doe"@example.com)'
            )
    return local, _envelope_domain(domain, text, role)


def _quoted_string(spec: str, text: str, role: str) -> tuple[str, str]:
    """The unescaped content of the quoted string ``spec`` starts with, and what follows it.

    RFC 5321 4.1.2: ``qtextSMTP`` is ASCII 32-126 but ``"`` and ``\\`` (RFC 6531 adds
    non-ASCII), ``quoted-pairSMTP`` is a backslash before ASCII 32-126.
    """
    content = []
    index = 1
    while index < len(spec):
        char = spec[index]
        if char == '"':
            return "".join(content), spec[index + 1 :]
        if char == "\\":
            index += 1
            char = spec[index] if index < len(spec) else ""
            if not (" " <= char <= "~"):
                raise _invalid(text, role, "a backslash in quotes must precede a printable ASCII")
        elif char == "\t":
            raise _invalid(text, role, "a quoted local part cannot hold a tab")
        content.append(char)
        index += 1
    raise _invalid(text, role, "a quoted string is not closed")


def _shortest_local_part(content: str, text: str, role: str) -> str:
    if not content:
        raise _invalid(text, role, "its local part is empty")
    if _DOT_STRING.match(content):
        return content
    return '"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _envelope_domain(domain: str, text: str, role: str) -> str:
    """An RFC 5321 domain: LDH labels (non-ASCII ones IDNA-encoded), or an address literal."""
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        try:
            if "%" in literal:  # a zone index means nothing beyond this host
                raise ValueError(literal)
            if literal[:5].lower() == "ipv6:":
                return f"[IPv6:{ipaddress.IPv6Address(literal[5:])}]"
            return f"[{ipaddress.IPv4Address(literal)}]"
        except ValueError:
            reason = "its address literal is not an IPv4 or IPv6 address"
            raise _invalid(text, role, reason) from None
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise _invalid(text, role, f"its domain cannot be IDNA-encoded ({exc})") from exc
    if not DOMAIN.match(domain):
        raise _invalid(text, role, "its domain is not a host name (letters, digits, '-', '.')")
    return domain


def _within_limit(address: str, role: str) -> str:
    if len(address) > MAX_ADDRESS_LENGTH:
        raise InvalidMessageError(
            f"The {role} address {address[:40]!r}… is {len(address)} characters long; "
            f"at most {MAX_ADDRESS_LENGTH} are accepted."
        )
    return address


def _check_header_text(text: str, *, what: str) -> None:
    """Refuse a line break (a header injection) or a control character in a header's text."""
    shown = repr(text[:80]) + ("…" if len(text) > 80 else "")
    if _LINE_BREAK.search(text):
        raise HeaderInjectionError(f"The {what} {shown} contains a line break.")
    forbidden = _FORBIDDEN.search(text)
    if forbidden:
        raise InvalidMessageError(
            f"The {what} {shown} contains the control character "
            f"U+{ord(forbidden.group()):04X}; header text is printable (RFC 5322 2.2)."
        )


def _check_headers(message: EmailMessage) -> None:
    """The subject, the extra headers and the Reply-To addresses (the envelope addresses are
    checked as they are converted)."""
    _check_header_text(str(message.subject), what="subject")
    for name, value in (message.extra_headers or {}).items():
        if not _FIELD_NAME.match(str(name)):
            raise HeaderInjectionError(
                f"The extra header name {str(name)!r} is refused: a header name is printable "
                "ASCII (33-126) without ':' (RFC 5322 2.2)."
            )
        _check_header_text(str(value), what=f"value of the extra header {name!r}")
    for address in message.reply_to:
        envelope_address(address, role="reply-to")


def recipients_of(message: EmailMessage) -> list[Any]:
    """``message.recipients()`` (empty ones left out, as Django does), or
    :class:`InvalidMessageError` for a to/cc/bcc value that cannot be read."""
    try:
        return message.recipients()
    except Exception as exc:  # a broken to/cc/bcc value
        raise InvalidMessageError(f"The message's recipients cannot be read: {exc}") from exc


def serialize(message: EmailMessage) -> SerializedMessage:
    """Validate and flatten one message; raises :class:`InvalidMessageError`."""
    recipients = recipients_of(message)
    if not recipients:
        raise InvalidMessageError("The message has no recipients: to, cc and bcc are all empty.")
    from_email = envelope_address(message.from_email, role="sender (from_email)")
    envelope_recipients = list(
        dict.fromkeys(envelope_address(r, role="recipient") for r in recipients)
    )
    _check_headers(message)
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
            if not mime.is_multipart() and message.body == "":
                # The stdlib's set_content() ends every text with a line break, so Django 6
                # would send an empty body as one empty line; 5.2 sends it empty, and so do we.
                data = data.removesuffix(b"\r\n") if data.endswith(b"\r\n\r\n\r\n") else data
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
