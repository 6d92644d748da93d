"""The one choke point for text that came from a server, before it is stored or logged.

A server can send anything: bytes that are not UTF-8 (a Latin-1 "Empfänger unbekannt"),
NUL bytes, control characters, megabytes in one line, or the credentials it was just sent.
aiosmtplib hands undecodable bytes over as lone surrogates (``surrogateescape``), which
neither PostgreSQL nor SQLite stores as text, and PostgreSQL refuses NUL. Every string that
carries what a server said (replies, per-recipient replies, the greeting, EHLO lines,
certificate subjects, transcript lines, error messages quoting any of them) passes
:func:`clean` first:

- undecodable bytes stay visible as ``\\xe4`` (other lone surrogates as ``\\udc00``);
- NUL is removed; other control characters but tab and newline become ``\\x1b``-style text
  (a log line cannot be forged or a terminal driven through them);
- known secrets are replaced by ``[redacted]`` (after NUL removal, so a NUL cannot split
  one, and before the cap, so a cut cannot leave half of one);
- the length is capped, saying how much was cut.

Whatever comes out is valid UTF-8 text that every supported database stores.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["DEFAULT_LIMIT", "REDACTED", "Secrets", "clean", "visible"]

REDACTED = "[redacted]"
#: Characters kept of one server-supplied string (a reply, an error) unless told otherwise.
DEFAULT_LIMIT = 4000
#: Secrets shorter than this are not scrubbed: replacing every "ab" in a transcript would
#: destroy it, and a secret that short protects nothing anyway.
MIN_SECRET_LENGTH = 3

_SURROGATE = re.compile("[\ud800-\udfff]")
#: C0 controls but tab and newline, and DEL.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


class Secrets:
    """Values that must never appear in stored or logged text, in every form they travel
    in (the caller adds the base64 forms AUTH uses)."""

    def __init__(self, values: Iterable[str | bytes | None] = ()) -> None:
        self._values: set[str] = set()
        self._longest_first: tuple[str, ...] = ()
        self.add(values)

    def add(self, values: Iterable[str | bytes | None]) -> None:
        for value in values:
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            if value and len(value) >= MIN_SECRET_LENGTH:
                # Also as stored text would show it, should it hold a control character.
                self._values.update({value, visible(value)})
        # Longest first: a secret that contains another is replaced whole.
        self._longest_first = tuple(sorted(self._values, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for secret in self._longest_first:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def __bool__(self) -> bool:
        return bool(self._values)


def _escape_surrogate(match: re.Match[str]) -> str:
    point = ord(match.group())
    if 0xDC80 <= point <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{point - 0xDC00:02x}"
    return f"\\u{point:04x}"


def _escape_control(match: re.Match[str]) -> str:
    char = match.group()
    return "" if char == "\x00" else f"\\x{ord(char):02x}"


def visible(text: str | bytes) -> str:
    """``text`` as storable text: undecodable bytes and controls shown, NUL removed."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", "surrogateescape")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = _SURROGATE.sub(_escape_surrogate, text)
    if _CONTROL.search(text):
        text = _CONTROL.sub(_escape_control, text)
    return text


def clean(
    text: str | bytes | None,
    *,
    secrets: Secrets | None = None,
    limit: int | None = DEFAULT_LIMIT,
) -> str:
    """What a server sent (or a message quoting it), ready to store or log."""
    if text is None:
        return ""
    text = visible(text)
    if secrets:
        text = secrets.scrub(text)
    if limit is not None and len(text) > limit:
        cut = len(text) - limit
        text = f"{text[:limit]}… [{cut} more characters not kept]"
    return text
