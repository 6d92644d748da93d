"""What one delivery attempt did, and the one place where it is made safe to store.

Invariant: every :class:`AttemptResult` that leaves a session has been through
:func:`finish` exactly once. There each string that carries what a server sent, or a
message quoting it, passes :func:`.sanitize.clean` with the dialogue's secrets (the
transcript's lines passed it as they were recorded), the queue id and enhanced codes are
read from the cleaned text, and no recipient is left without a verdict.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .classify import Outcome, parse_enhanced_code, parse_queue_id
from .transcript import Transcript

__all__ = ["AttemptResult", "RecipientResult", "finish"]


@dataclass
class RecipientResult:
    address: str
    #: accepted | deferred | rejected | unknown (| pending, only inside a session)
    state: str
    code: int | None = None
    text: str = ""
    #: A :class:`~.stages.Stage` value, or "local" / "connect".
    stage: str = ""

    @property
    def enhanced_code(self) -> str:
        return parse_enhanced_code(self.text)[0]

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "code": self.code,
            "enhanced_code": self.enhanced_code,
            "text": self.text,
            "stage": self.stage,
        }


@dataclass
class AttemptResult:
    """What one delivery attempt of one message did, ready to be stored."""

    outcome: Outcome = Outcome.TRANSIENT_FAILURE
    host: str = ""
    port: int = 0
    peer_address: str = ""
    tls_version: str = ""
    tls_cipher: str = ""
    certificate_subject: str = ""
    auth_mechanism: str = ""
    extensions_advertised: list[str] = field(default_factory=list)
    extensions_used: list[str] = field(default_factory=list)
    mail_parameters: list[str] = field(default_factory=list)
    rcpt_parameters: list[str] = field(default_factory=list)
    recipients: dict[str, RecipientResult] = field(default_factory=dict)
    reply_code: int | None = None
    reply_text: str = ""
    queue_id: str = ""
    error: str = ""
    #: The failure is the provider's, not the message's: do not count it against the message.
    provider_level: bool = False
    #: A reply rule asked to pause the provider although this message's outcome stands.
    pause_provider: bool = False
    #: Why, for the provider's status (the rule's description, else the reply).
    pause_reason: str = ""
    retry_after_seconds: int | None = None
    body_sent: bool = False
    transcript: str = ""
    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0

    @property
    def reply_enhanced_code(self) -> str:
        return parse_enhanced_code(self.reply_text)[0]


def finish(result: AttemptResult, transcript: Transcript) -> AttemptResult:
    """Make ``result`` storable and free of secrets; call once, as it leaves the session."""
    clean = transcript.clean
    result.reply_text = clean(result.reply_text)
    result.error = clean(result.error)
    result.pause_reason = clean(result.pause_reason)
    result.certificate_subject = clean(result.certificate_subject)
    result.tls_version = clean(result.tls_version)
    result.tls_cipher = clean(result.tls_cipher)
    result.extensions_advertised = [clean(line) for line in result.extensions_advertised]
    result.extensions_used = [clean(line) for line in result.extensions_used]
    for recipient in result.recipients.values():
        recipient.text = clean(recipient.text)
        if recipient.state == "pending":  # a guard: every path gives each a verdict first
            recipient.state = "deferred"
    accepted = [r for r in result.recipients.values() if r.state == "accepted"]
    # The last accepted transaction's final reply (RCPTMAX may split a message in several).
    result.queue_id = parse_queue_id(accepted[-1].text) if accepted else ""
    result.transcript = transcript.render()
    result.finished_at = time.time()
    return result
