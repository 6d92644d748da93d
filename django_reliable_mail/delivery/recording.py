"""Store attempts and move each message on: sent, retrying, held or failed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connections, router
from django.utils import timezone

from .. import signals
from ..conf import Config, ProviderConfig
from ..models import DeliveryAttempt, OutboundMessage, RecipientStatus
from ..retry import retry_delay, should_give_up
from ..smtp.classify import Outcome
from ..smtp.transport import AttemptResult
from ..transactions import writing
from . import rows
from .claiming import recipient_rows
from .states import DISABLE_ONCE, OPEN_STATES, State, Status

logger = logging.getLogger(__name__)


_STATE_OF = {
    "accepted": State.ACCEPTED,
    "rejected": State.REJECTED,
    "deferred": State.DEFERRED,
    "unknown": State.UNKNOWN,
    "pending": State.DEFERRED,
}


MESSAGE_FIELDS = [
    "status",
    "attempt_count",
    "lease_expires_at",
    "claim_token",
    "body_started_at",
    "options",
    "last_error",
    "sent_at",
    "next_attempt_at",
    "updated_at",
]
RECIPIENT_FIELDS = ["state", "reply_code", "reply_enhanced_code", "reply_text", "attempt"]


def record(
    message: OutboundMessage,
    result: AttemptResult,
    *,
    provider: ProviderConfig,
    config: Config,
    now: datetime | None = None,
) -> DeliveryAttempt:
    """Store one attempt and move its message on (see :func:`record_batch`)."""
    return record_batch([(message, result)], provider=provider, config=config, now=now)[0]


def record_batch(
    items: Sequence[tuple[OutboundMessage, AttemptResult]],
    *,
    provider: ProviderConfig,
    config: Config,
    now: datetime | None = None,
    return_attempts: bool = True,
) -> list[DeliveryAttempt]:
    """Store a batch of attempts and move each message on: sent, retrying, held or failed.

    One transaction and a handful of statements for the whole batch (bulk insert of the
    attempts, bulk updates of recipients and messages), not a commit per message. With
    ``return_attempts=False`` (the worker's batches) no attempt instances are built unless
    a signal receiver wants them, and an empty list is returned.
    """
    now = now or timezone.now()
    ids = [message.pk for message, _ in items]
    with writing():
        current = rows.values_by_ids(OutboundMessage, ids, ["status", "claim_token"])
        history = _history(ids)
        values: list[dict[str, Any]] = []
        overtaken: set[int] = set()
        for message, result in items:
            status_now, token_now = current[message.pk]
            # A worker slower than its lease: the message was recovered and claimed again.
            # The attempt happened and is stored; the message belongs to the new claim.
            if status_now == Status.SENDING and token_now != message.claim_token:
                overtaken.add(message.pk)
            tried, unknown = history.get(message.pk, (0, 0))
            values.append(
                _attempt_values(
                    message,
                    result,
                    number=tried + 1,
                    possible_duplicate=result.outcome == Outcome.UNKNOWN
                    or bool(unknown)
                    or message.pk in overtaken,
                    provider=provider,
                    config=config,
                )
            )
        pks = rows.insert_values(DeliveryAttempt, values)
        alias = router.db_for_write(DeliveryAttempt)
        # Building instances costs more than inserting the rows: only for someone who uses them.
        attempts = (
            [
                _stored_attempt(pk, row, message, alias)
                for pk, row, (message, _) in zip(pks, values, items, strict=True)
            ]
            if return_attempts or _attempts_wanted()
            else []
        )
        changed_recipients, changed_messages = [], []
        for (message, result), attempt_pk in zip(items, pks, strict=True):
            statuses = {s.address: s for s in recipient_rows(message)}
            for address, outcome in result.recipients.items():
                status = statuses.get(address)
                if status is None:
                    continue
                status.state = _STATE_OF[outcome.state]
                status.reply_code = outcome.code
                status.reply_enhanced_code = outcome.enhanced_code
                status.reply_text = outcome.text
                status.attempt_id = attempt_pk
                changed_recipients.append(status)
            if message.pk not in overtaken:
                states = [s.state for s in statuses.values()]
                _advance(message, result, states, provider=provider, config=config, now=now)
                changed_messages.append(message)
        rows.update(RecipientStatus, changed_recipients, RECIPIENT_FIELDS)
        rows.update(OutboundMessage, changed_messages, MESSAGE_FIELDS)
    for i, (message, _) in enumerate(items):
        _log(message, values[i])
        attempt = attempts[i] if attempts else None
        if attempt is not None:
            signals.attempt_finished.send(sender=OutboundMessage, message=message, attempt=attempt)
        if message.status == Status.SENT:
            signals.message_sent.send(sender=OutboundMessage, message=message)
        elif message.status == Status.FAILED and attempt is not None:
            signals.message_failed.send(sender=OutboundMessage, message=message, attempt=attempt)
    return attempts


def _attempts_wanted() -> bool:
    """Whether a receiver of a signal that carries the attempt is connected."""
    return signals.attempt_finished.has_listeners(
        OutboundMessage
    ) or signals.message_failed.has_listeners(OutboundMessage)


def _history(ids: list[int]) -> dict[int, tuple[int, int]]:
    """``{message id: (attempts stored, how many of them unknown)}``, for those with any.

    Plain SQL: one statement per recorded chunk, and on PostgreSQL the ids go as one array,
    so the statement is the same (and prepared once) for every chunk.
    """
    connection = connections[router.db_for_read(DeliveryAttempt)]
    meta = DeliveryAttempt._meta
    quote = connection.ops.quote_name
    message, outcome = (
        quote(meta.get_field("message").column),
        quote(meta.get_field("outcome").column),
    )
    if connection.vendor == "postgresql":
        match, params = f"{message} = ANY(%s::bigint[])", [list(ids)]
    else:
        match, params = f"{message} IN ({', '.join(['%s'] * len(ids))})", list(ids)
    sql = (
        f"SELECT {message}, COUNT(*), SUM(CASE WHEN {outcome} = %s THEN 1 ELSE 0 END) "
        f"FROM {quote(meta.db_table)} WHERE {match} GROUP BY {message}"
    )
    with rows.cursor(connection) as cursor:
        cursor.execute(rows.numbered(sql, connection), [Outcome.UNKNOWN.value, *params])
        return {pk: (tried, unknown or 0) for pk, tried, unknown in cursor.fetchall()}


def _attempt_values(
    message: OutboundMessage,
    result: AttemptResult,
    *,
    number: int,
    possible_duplicate: bool,
    provider: ProviderConfig,
    config: Config,
) -> dict[str, Any]:
    """The new attempt row, ``{attname: value}``."""
    keep_transcript = config.transcripts == "always" or (
        config.transcripts == "failures" and result.outcome != Outcome.ACCEPTED
    )
    return dict(
        message_id=message.pk,
        number=number,
        provider=provider.name,
        started_at=datetime.fromtimestamp(result.started_at, tz=UTC),
        finished_at=datetime.fromtimestamp(result.finished_at or result.started_at, tz=UTC),
        host=result.host,
        port=result.port or None,
        peer_address=result.peer_address,
        tls_version=result.tls_version,
        tls_cipher=result.tls_cipher,
        certificate_subject=result.certificate_subject,
        auth_mechanism=result.auth_mechanism,
        extensions_advertised=result.extensions_advertised,
        extensions_used=result.extensions_used,
        mail_parameters=result.mail_parameters,
        rcpt_parameters=result.rcpt_parameters,
        recipient_replies={a: r.as_dict() for a, r in result.recipients.items()},
        reply_code=result.reply_code,
        reply_enhanced_code=result.reply_enhanced_code,
        reply_text=result.reply_text,
        queue_id=result.queue_id,
        outcome=result.outcome,
        error=result.error,
        provider_level=result.provider_level,
        possible_duplicate=possible_duplicate,
        transcript=result.transcript if keep_transcript else "",
    )


def _stored_attempt(
    pk: Any, values: dict[str, Any], message: OutboundMessage, alias: str
) -> DeliveryAttempt:
    """The stored attempt as a model instance (for signals and callers), with the message
    cached on it, as ``DeliveryAttempt(message=message)`` would."""
    attempt = rows.stored(DeliveryAttempt, pk, values, alias)
    DeliveryAttempt._meta.get_field("message").set_cached_value(attempt, message)
    return attempt


def _advance(
    message: OutboundMessage,
    result: AttemptResult,
    states: list[str],
    *,
    provider: ProviderConfig,
    config: Config,
    now: datetime,
) -> None:
    """Decide the message's next status, in memory (the caller saves in bulk)."""
    open_left = [s for s in states if s in OPEN_STATES]
    # A provider-level failure (auth broken, refused, quota) is not the message's fault:
    # it does not use up one of the message's attempts.
    if not result.provider_level:
        message.attempt_count += 1
    counted = message.attempt_count
    message.lease_expires_at = None
    if DISABLE_ONCE in (message.options or {}):
        message.options = {k: v for k, v in message.options.items() if k != DISABLE_ONCE}
    message.claim_token = ""
    message.body_started_at = None
    message.last_error = result.error
    message.updated_at = now
    if not open_left:
        message.next_attempt_at = None
        if any(s == State.ACCEPTED for s in states):
            message.status = Status.SENT
            message.sent_at = now
        else:
            message.status = Status.FAILED
    elif result.outcome == Outcome.UNKNOWN and config.unknown_outcome == "hold":
        message.status = Status.HELD
        message.next_attempt_at = None
        message.last_error = (
            "held for an operator: the connection was lost after the body was sent, "
            "so the server may have the message. " + result.error
        )
    elif not result.provider_level and should_give_up(
        provider.retry, attempts_so_far=counted, created_at=message.created_at, now=now
    ):
        message.status = Status.FAILED
        message.next_attempt_at = None
        message.last_error = f"gave up after {counted} attempt(s): {result.error}"
    else:
        message.status = Status.RETRYING
        delay = retry_delay(
            provider.retry, max(counted, 1), hint_seconds=result.retry_after_seconds
        )
        message.next_attempt_at = now + timedelta(seconds=delay)


def _log(message: OutboundMessage, attempt: dict[str, Any]) -> None:
    """One line per attempt, from the attempt row's values."""
    level = logging.INFO if attempt["outcome"] == Outcome.ACCEPTED else logging.WARNING
    if not logger.isEnabledFor(level):
        return
    code, error = attempt["reply_code"], attempt["error"]
    logger.log(
        level,
        "message %s attempt %s via %s: %s%s",
        message.pk,
        attempt["number"],
        attempt["provider"],
        attempt["outcome"],
        f" ({code} {attempt['reply_text']})" if code else (f" ({error})" if error else ""),
    )
