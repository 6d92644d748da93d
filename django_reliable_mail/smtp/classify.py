"""Replies → outcomes.

The basic reply code decides the class (RFC 5321 §4.2.1: 2yz done, 4yz transient, 5yz
permanent). RFC 3463 enhanced status codes (``5.1.1``) are parsed out of the text and kept;
they refine the outcome through reply rules, which a provider preset or the settings supply
(e.g. Gmail's ``550 5.4.5`` daily quota is really "retry later").
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ENHANCED_CODE_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)", re.ASCII)
QUEUE_ID_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"queued as\s+<?([\w.@\-]+)>?", re.IGNORECASE),
    re.compile(r"\bid[=:]\s*<?([\w.@\-]+)>?", re.IGNORECASE),
    re.compile(r"\bOK\s+queued\s+([\w.\-]+)", re.IGNORECASE),
    re.compile(r"\bOK\s+\d+\s+([\w.\-]+)\s+-\s+gsmtp", re.IGNORECASE),
)


class Outcome(enum.StrEnum):
    ACCEPTED = "accepted"
    PARTIAL = "partial"
    TRANSIENT_FAILURE = "transient_failure"
    PERMANENT_FAILURE = "permanent_failure"
    UNKNOWN = "unknown"
    CONFIG_ERROR = "config_error"


class Verdict(enum.StrEnum):
    """What one reply means for what it answered."""

    OK = "ok"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    #: The provider itself is unusable right now (auth broken, quota, policy): every message
    #: through it waits, and its attempts are not counted against the message.
    PROVIDER = "provider"


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def enhanced_code(self) -> str:
        return parse_enhanced_code(self.text)[0]

    @property
    def detail(self) -> str:
        return parse_enhanced_code(self.text)[1]

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


def parse_enhanced_code(text: str) -> tuple[str, str]:
    """Split ``'5.1.1 User unknown'`` into ``('5.1.1', 'User unknown')``.

    Only the first line of a multi-line reply carries it reliably; when absent the first
    element is ``''``.
    """
    match = ENHANCED_CODE_RE.match(text.strip())
    if not match:
        return "", text.strip()
    return match.group(0), text.strip()[match.end() :].strip()


def parse_queue_id(text: str) -> str:
    for pattern in QUEUE_ID_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1)[:255]
    return ""


@dataclass(frozen=True)
class ReplyRule:
    """Reclassify a reply. Every given condition must match; absent ones match anything.

    ``code`` may be an exact code (550) or a class pattern ("4xx", "55x"); ``enhanced`` an
    exact enhanced code ("5.4.5") or a prefix ending in a dot ("5.7."); ``text`` a regular
    expression searched case-insensitively.
    """

    verdict: Verdict
    code: str = ""
    enhanced: str = ""
    text: str = ""
    retry_after_seconds: int | None = None
    description: str = ""
    #: Also pause the provider (e.g. a permanent sender-configuration error).
    pause_provider: bool = False

    def __post_init__(self) -> None:
        # Only the stage's expected code is success (stages.py); a rule classifies failures.
        if self.verdict == Verdict.OK:
            raise ValueError("a reply rule cannot make a reply a success (verdict 'ok')")

    def matches(self, reply: Reply) -> bool:
        if self.code and not _code_matches(self.code, reply.code):
            return False
        if self.enhanced:
            enhanced = reply.enhanced_code
            if self.enhanced.endswith("."):
                if not enhanced.startswith(self.enhanced):
                    return False
            elif enhanced != self.enhanced:
                return False
        if self.text and not re.search(self.text, reply.text, re.IGNORECASE):
            return False
        return True


def _code_matches(pattern: str, code: int) -> bool:
    pattern = pattern.lower()
    text = str(code)
    return len(pattern) == 3 and all(p in ("x", c) for p, c in zip(pattern, text, strict=True))


@dataclass(frozen=True)
class Classification:
    verdict: Verdict
    rule: ReplyRule | None = None

    @property
    def retry_after_seconds(self) -> int | None:
        return self.rule.retry_after_seconds if self.rule else None


def classify_reply(reply: Reply, rules: Sequence[ReplyRule] = ()) -> Classification:
    """The class of a reply's code, or the first matching rule's verdict.

    This knows no stage: ``ok`` here only means "2xx or 3xx". The transport judges every
    reply at its stage with :func:`.stages.judge`, where only the expected code is ``ok``.
    """
    for rule in rules:
        if rule.matches(reply):
            return Classification(rule.verdict, rule)
    if 200 <= reply.code < 400:
        return Classification(Verdict.OK)
    if 400 <= reply.code < 500:
        return Classification(Verdict.TRANSIENT)
    return Classification(Verdict.PERMANENT)


def combine_outcome(recipient_verdicts: Iterable[str]) -> Outcome:
    """The attempt's outcome from its recipients' states (accepted/deferred/rejected/unknown)."""
    states = list(recipient_verdicts)
    if states and all(s == "accepted" for s in states):
        return Outcome.ACCEPTED
    if any(s == "accepted" for s in states):
        return Outcome.PARTIAL
    if any(s == "unknown" for s in states):
        return Outcome.UNKNOWN
    if any(s == "deferred" for s in states):
        return Outcome.TRANSIENT_FAILURE
    return Outcome.PERMANENT_FAILURE
