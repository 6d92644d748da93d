"""A redacted record of one SMTP dialogue.

Each line is ``[+0.012s] C: EHLO host`` (client), ``S:`` (server) or ``*:`` (a connection
event such as TLS). AUTH payloads and the 334 challenges are replaced by ``[redacted]``;
the message body is one summary line (size, sha256). Every line passes
:func:`.sanitize.clean` with this dialogue's secrets (a server may echo what it was sent,
or send bytes no database stores); :meth:`Transcript.clean` does the same for the other
strings of the attempt.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable

from .sanitize import DEFAULT_LIMIT, REDACTED, Secrets, clean

__all__ = ["DEFAULT_MAX_CHARS", "REDACTED", "Transcript"]

DEFAULT_MAX_CHARS = 64 * 1024


class Transcript:
    def __init__(
        self,
        *,
        max_chars: int = DEFAULT_MAX_CHARS,
        enabled: bool = True,
        secrets: Secrets | None = None,
    ) -> None:
        self._start = time.monotonic()
        self._lines: list[str] = []
        self._chars = 0
        self._dropped = 0
        #: What this dialogue must never show (the credentials in each form they travel).
        #: Shared by the transcripts of one connection: a server can echo, in its reply to
        #: a later message, the AUTH payload it was sent before the first.
        self.secrets = secrets if secrets is not None else Secrets()
        self.max_chars = max_chars
        self.enabled = enabled

    # -- secrets ---------------------------------------------------------------------------

    def add_secrets(self, secrets: Iterable[str | bytes | None]) -> None:
        """Register values that must never appear in any stored text."""
        self.secrets.add(secrets)

    def scrub(self, text: str) -> str:
        return self.secrets.scrub(text)

    def clean(self, text: str | bytes | None, *, limit: int | None = DEFAULT_LIMIT) -> str:
        """A string of this attempt, as it may be stored (see :func:`.sanitize.clean`)."""
        return clean(text, secrets=self.secrets, limit=limit)

    # -- recording -------------------------------------------------------------------------

    def _add(self, direction: str, text: str) -> None:
        if not self.enabled:
            return
        line = f"[+{time.monotonic() - self._start:.3f}s] {direction}: {self.clean(text)}"
        if self._chars + len(line) > self.max_chars:
            self._dropped += 1
            return
        self._lines.append(line)
        self._chars += len(line) + 1

    def client(self, text: str) -> None:
        self._add("C", text)

    def server(self, code: int, message: str) -> None:
        lines = message.split("\n") if message else [""]
        for index, line in enumerate(lines):
            separator = " " if index == len(lines) - 1 else "-"
            self._add("S", f"{code}{separator}{line}".rstrip())

    def received(self, text: str) -> None:
        """What the server sent when it was not a well-formed reply, line by line as is."""
        for line in text.split("\n") if text else [""]:
            self._add("S", line)

    def event(self, text: str) -> None:
        self._add("*", text)

    def body(self, data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()
        self.client(f"[message body: {len(data)} bytes, sha256 {digest}]")
        self.client(".")

    def render(self) -> str:
        text = "\n".join(self._lines)
        if self._dropped:
            text += f"\n[transcript truncated: {self._dropped} more lines not stored]"
        return text

    @property
    def lines(self) -> list[str]:
        return list(self._lines)
