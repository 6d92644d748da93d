"""The SMTP protocol side of django-reliable-mail. Never imports Django."""

from .capabilities import KNOWN_EXTENSIONS, SUPPORTED_AUTH_MECHANISMS, Capabilities
from .classify import Outcome, Reply, ReplyRule, Verdict, classify_reply
from .stages import Stage
from .transport import (
    AttemptResult,
    BodyStartNotRecorded,
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
    "BodyStartNotRecorded",
    "Capabilities",
    "Envelope",
    "Outcome",
    "RecipientResult",
    "Reply",
    "ReplyRule",
    "SMTPSession",
    "ServerSettings",
    "Stage",
    "Verdict",
    "classify_reply",
    "deliver",
]
