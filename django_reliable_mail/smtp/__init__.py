"""The SMTP protocol side of django-reliable-mail. Never imports Django."""

from .capabilities import KNOWN_EXTENSIONS, SUPPORTED_AUTH_MECHANISMS, Capabilities
from .classify import Outcome, Reply, ReplyRule, Verdict, classify_reply
from .transport import (
    AttemptResult,
    Envelope,
    RecipientResult,
    ServerSettings,
    SMTPSession,
    deliver,
)

__all__ = [
    "KNOWN_EXTENSIONS",
    "SUPPORTED_AUTH_MECHANISMS",
    "AttemptResult",
    "Capabilities",
    "Envelope",
    "Outcome",
    "RecipientResult",
    "Reply",
    "ReplyRule",
    "SMTPSession",
    "ServerSettings",
    "Verdict",
    "classify_reply",
    "deliver",
]
