"""What a caller is told when a first attempt in its own process fails: the exception
Django's SMTP backend would have raised there.

Only permanent failures and configuration errors become exceptions (the message is stored
and will not go out as it is); transient failures and unknown outcomes are not raised, the
message is retried. Each exception is also a :class:`~.exceptions.DeliveryError` carrying
the stored message. Pure: it reads stored attempts (or a failed ``open()``), it writes
nothing.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .exceptions import (
    AuthenticationFailed,
    CertificateRejected,
    DataRefused,
    DeliveryError,
    NotSupported,
    RecipientsRefused,
    ReplyRefused,
    SenderRefused,
    SetupFailed,
)
from .smtp.classify import Outcome
from .smtp.keeper import OpenFailed

__all__ = ["Failure", "error_for", "error_for_attempt", "error_for_open"]

#: smtplib's own wording, which Django's callers may match.
NO_AUTH = "SMTP AUTH extension not supported by server."
NO_STARTTLS = "STARTTLS extension not supported by server."
_SETUP_STAGES = {"greeting", "ehlo", "helo", "starttls", "auth", "connect"}


@dataclass(frozen=True)
class Failure:
    """The facts an exception is chosen from, wherever they were read."""

    outcome: str
    error: str
    code: int | None = None
    text: str = ""
    #: Where the dialogue was when it failed (a stage of ``smtp.stages``).
    stage: str = ""
    sender: str = ""
    #: Address → (state, code, text, stage) of each recipient.
    recipients: Mapping[str, tuple[str, int | None, str, str]] = field(default_factory=dict)
    advertised: Sequence[str] = ()


def error_for_attempt(message: Any, attempt: Any) -> DeliveryError | None:
    """The exception for a stored ``DeliveryAttempt`` of the stored ``message``, or None."""
    recipients = {
        address: (
            str(reply.get("state", "")),
            reply.get("code"),
            str(reply.get("text", "")),
            str(reply.get("stage", "")),
        )
        for address, reply in (attempt.recipient_replies or {}).items()
    }
    stages = {stage for _, _, _, stage in recipients.values()}
    failure = Failure(
        outcome=attempt.outcome,
        error=attempt.error,
        code=attempt.reply_code,
        text=attempt.reply_text,
        stage=next(iter(stages)) if len(stages) == 1 else "",
        sender=message.from_email,
        recipients=recipients,
        advertised=attempt.extensions_advertised or (),
    )
    error = error_for(failure)
    if error is not None:
        error.outbound_message = message
    return error


def error_for_open(failed: OpenFailed) -> BaseException:
    """What ``open()`` raises: the configuration error as Django would name it, else the
    network error underneath (``ConnectionRefusedError``, ``ssl.SSLError`` …)."""
    failure = failed.failure
    reply = failure.reply
    facts = Failure(
        outcome=str(failure.outcome),
        error=str(failure),
        code=reply.code if reply is not None else None,
        text=reply.text if reply is not None else "",
        stage=failed.stage,
        advertised=failed.advertised,
    )
    if failure.outcome == Outcome.CONFIG_ERROR:
        error = error_for(facts)
        if error is not None:
            return error
    underneath = _innermost(failure, (ssl.SSLError, OSError))
    if underneath is not None:
        return underneath
    if reply is not None:
        return ReplyRefused(reply.code, str(failure))
    return SetupFailed(str(failure))


def _innermost(
    error: BaseException, kinds: tuple[type[BaseException], ...]
) -> BaseException | None:
    found = None
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, kinds) and type(current).__module__ in ("ssl", "builtins"):
            found = current
        current = current.__cause__ or current.__context__
    return found


def error_for(failure: Failure) -> DeliveryError | None:
    """The exception for a permanent failure or a configuration error; None otherwise."""
    if failure.outcome == Outcome.PERMANENT_FAILURE:
        return _refusal(failure)
    if failure.outcome == Outcome.CONFIG_ERROR:
        return _setup_error(failure)
    return None


def _refusal(failure: Failure) -> DeliveryError:
    rejected = {a: r for a, r in failure.recipients.items() if r[0] == "rejected"}
    stages = {stage for _, _, _, stage in rejected.values()} or {failure.stage}
    code, text = _reply_of(failure, rejected.values())
    if "local" in stages:  # refused here before any byte was sent (size, SMTPUTF8 …)
        return NotSupported(text or failure.error)
    if "mail" in stages:
        return SenderRefused(code, text, failure.sender)
    if stages & {"data", "end_of_data"}:
        return DataRefused(code, text)
    if stages == {"rcpt"} and rejected:
        return RecipientsRefused({a: (r[1], r[2]) for a, r in rejected.items()})
    return ReplyRefused(code, text or failure.error)


def _reply_of(
    failure: Failure, rejected: Iterable[tuple[str, int | None, str, str]]
) -> tuple[int, str]:
    for _, code, text, _ in rejected:
        if code is not None:
            return code, text
    return failure.code or 554, failure.text or failure.error


def _setup_error(failure: Failure) -> DeliveryError:
    error = failure.error
    if "certificate" in error and "could not be verified" in error:
        return CertificateRejected(error)
    if failure.stage == "auth" or "AUTH" in error or "credentials" in error:
        if failure.code is not None and failure.code >= 400:
            return AuthenticationFailed(failure.code, failure.text or error)
        if not _advertises(failure.advertised, "AUTH"):
            return NotSupported(f"{NO_AUTH} ({error})")
        return NotSupported(error)
    if "STARTTLS" in error and not _advertises(failure.advertised, "STARTTLS"):
        return NotSupported(f"{NO_STARTTLS} ({error})")
    if failure.code is not None:
        return ReplyRefused(failure.code, failure.text or error)
    return SetupFailed(error)


def _advertises(lines: Iterable[str], keyword: str) -> bool:
    return any(line.split(" ", 1)[0].upper() == keyword for line in lines)
