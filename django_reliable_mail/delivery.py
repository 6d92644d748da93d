"""The service layer: store, claim, run the transport, record, schedule the retry.

Everything that touches the database goes through here, so the backend, the tasks, the
admin and the commands share one path. No transaction is ever held open while SMTP runs:
claiming and recording are two short transactions around the network work.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from . import signals
from .conf import Config, ProviderConfig, get_config
from .exceptions import InvalidMessageError
from .models import DeliveryAttempt, OutboundMessage, RecipientStatus
from .options import DeliveryOptions, options_of
from .retry import retry_delay, should_give_up
from .serialize import SerializedMessage, serialize
from .smtp.classify import Outcome
from .smtp.transport import AttemptResult, Envelope, deliver

logger = logging.getLogger(__name__)
T = TypeVar("T")

Status = OutboundMessage.Status
State = RecipientStatus.State
#: Recipient states that still need delivering.
OPEN_STATES = (State.PENDING, State.DEFERRED, State.UNKNOWN)


# -- enqueue ------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    serialized: SerializedMessage
    options: DeliveryOptions
    provider: str


def prepare(message: EmailMessage, *, config: Config, provider: str | None) -> _Prepared:
    """Validate one message fully before anything is written."""
    options = options_of(message)
    serialized = serialize(message)
    name = options.provider or provider or config.route(serialized.from_email)
    config.provider(name)  # UnknownProviderError names the configured ones
    return _Prepared(serialized, options, name)


def enqueue(prepared: Sequence[_Prepared]) -> list[OutboundMessage]:
    """Store messages (status ``queued``) in the caller's transaction, all or none."""
    now = timezone.now()
    rows = [
        OutboundMessage(
            status=Status.QUEUED,
            provider=p.provider,
            from_email=p.serialized.from_email,
            recipients=p.serialized.recipients,
            subject=p.serialized.subject,
            message_id=p.serialized.message_id,
            mime=p.serialized.data,
            size=len(p.serialized.data),
            priority=p.options.priority,
            send_at=p.options.send_at,
            next_attempt_at=p.options.send_at or now,
            require_tls=p.options.require_tls,
            idempotency_key=p.options.idempotency_key,
            tags=p.options.tags,
            metadata=p.options.metadata,
            options=_dsn_options(p.options),
        )
        for p in prepared
    ]
    with transaction.atomic():
        created = OutboundMessage.objects.bulk_create(rows)
        if any(row.pk is None for row in created):  # databases that return no ids
            raise RuntimeError("the database did not return primary keys from bulk_create")
        RecipientStatus.objects.bulk_create(
            RecipientStatus(message=row, address=address)
            for row in created
            for address in row.recipients
        )
    for row in created:
        signals.message_queued.send(sender=OutboundMessage, message=row)
    return created


def _dsn_options(options: DeliveryOptions) -> dict[str, Any]:
    dsn = {}
    if options.dsn_notify:
        dsn["dsn_notify"] = options.dsn_notify
    if options.dsn_ret:
        dsn["dsn_ret"] = options.dsn_ret
    if options.dsn_envid:
        dsn["dsn_envid"] = options.dsn_envid
    return dsn


# -- claim ------------------------------------------------


def claim(
    message_id: int, *, config: Config, now: datetime | None = None
) -> OutboundMessage | None:
    """Move one due message to ``sending`` with a lease; None if someone else has it.

    A compare-and-set UPDATE: exactly one caller wins, on every database.
    """
    now = now or timezone.now()
    lease = now + timedelta(seconds=config.lease_seconds)
    won = (
        OutboundMessage.objects.filter(pk=message_id, status__in=(Status.QUEUED, Status.RETRYING))
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .update(status=Status.SENDING, lease_expires_at=lease, updated_at=now)
    )
    if not won:
        return None
    return OutboundMessage.objects.get(pk=message_id)


# -- send ------------------------------------------------


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, even if this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="reliable-mail-send")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def envelope_for(message: OutboundMessage) -> Envelope:
    open_addresses = list(
        message.recipient_statuses.filter(state__in=OPEN_STATES).values_list("address", flat=True)
    )
    options = message.options or {}
    return Envelope(
        sender=message.from_email,
        recipients=open_addresses,
        data=bytes(message.mime),
        require_tls=message.require_tls,
        dsn_notify=tuple(options.get("dsn_notify", ())),
        dsn_ret=options.get("dsn_ret"),
        dsn_envid=options.get("dsn_envid"),
    )


def deliver_message(message_id: int, *, config: Config | None = None) -> DeliveryAttempt | None:
    """Claim, send and record one message. Returns the attempt, or None if not claimed."""
    config = config or get_config()
    message = claim(message_id, config=config)
    if message is None:
        return None
    provider = config.provider(message.provider)
    envelope = envelope_for(message)
    server = provider.server_settings(
        transcript_max_chars=config.transcript_max_chars,
        record=config.transcripts != "never",
    )
    result = run_sync(deliver(server, envelope))
    return record(message, result, provider=provider, config=config)


def deliver_messages(
    message_ids: Iterable[int], *, config: Config | None = None
) -> list[DeliveryAttempt]:
    config = config or get_config()
    attempts = []
    for message_id in message_ids:
        attempt = deliver_message(message_id, config=config)
        if attempt is not None:
            attempts.append(attempt)
    return attempts


# -- record ------------------------------------------------


_STATE_OF = {
    "accepted": State.ACCEPTED,
    "rejected": State.REJECTED,
    "deferred": State.DEFERRED,
    "unknown": State.UNKNOWN,
    "pending": State.DEFERRED,
}


def record(
    message: OutboundMessage,
    result: AttemptResult,
    *,
    provider: ProviderConfig,
    config: Config,
    now: datetime | None = None,
) -> DeliveryAttempt:
    """Store the attempt and move the message on: sent, retrying, held or failed."""
    now = now or timezone.now()
    keep_transcript = config.transcripts == "always" or (
        config.transcripts == "failures" and result.outcome != Outcome.ACCEPTED
    )
    with transaction.atomic():
        earlier_unknown = message.attempts.filter(outcome=Outcome.UNKNOWN).exists()
        number = (message.attempts.count() or 0) + 1
        attempt = DeliveryAttempt.objects.create(
            message=message,
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
            possible_duplicate=result.outcome == Outcome.UNKNOWN or earlier_unknown,
            transcript=result.transcript if keep_transcript else "",
        )
        statuses = {s.address: s for s in message.recipient_statuses.all()}
        changed = []
        for address, outcome in result.recipients.items():
            status = statuses.get(address)
            if status is None:
                continue
            status.state = _STATE_OF[outcome.state]
            status.reply_code = outcome.code
            status.reply_enhanced_code = outcome.enhanced_code
            status.reply_text = outcome.text
            status.attempt = attempt
            changed.append(status)
        RecipientStatus.objects.bulk_update(
            changed, ["state", "reply_code", "reply_enhanced_code", "reply_text", "attempt"]
        )
        states = [s.state for s in statuses.values()]
        _advance(message, attempt, result, states, provider=provider, config=config, now=now)
    _log(message, attempt)
    signals.attempt_finished.send(sender=OutboundMessage, message=message, attempt=attempt)
    if message.status == Status.SENT:
        signals.message_sent.send(sender=OutboundMessage, message=message)
    elif message.status == Status.FAILED:
        signals.message_failed.send(sender=OutboundMessage, message=message, attempt=attempt)
    return attempt


def _advance(
    message: OutboundMessage,
    attempt: DeliveryAttempt,
    result: AttemptResult,
    states: list[str],
    *,
    provider: ProviderConfig,
    config: Config,
    now: datetime,
) -> None:
    open_left = [s for s in states if s in OPEN_STATES]
    # A provider-level failure (auth broken, refused, quota) is not the message's fault:
    # it does not use up one of the message's attempts.
    if not result.provider_level:
        message.attempt_count = F("attempt_count") + 1
    message.lease_expires_at = None
    message.last_error = result.error
    counted = message.attempts.filter(provider_level=False).count()
    if not open_left:
        if any(s == State.ACCEPTED for s in states):
            message.status = Status.SENT
            message.sent_at = now
            message.next_attempt_at = None
        else:
            message.status = Status.FAILED
            message.next_attempt_at = None
    elif result.outcome == Outcome.UNKNOWN and config.unknown_outcome == "hold":
        message.status = Status.HELD
        message.next_attempt_at = None
        message.last_error = (
            "held for an operator: the connection was lost after the body was sent, "
            "so the server may have the message. " + result.error
        )
    elif (
        should_give_up(
            provider.retry, attempts_so_far=counted, created_at=message.created_at, now=now
        )
        and not result.provider_level
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
    message.save(
        update_fields=[
            "status",
            "attempt_count",
            "lease_expires_at",
            "last_error",
            "sent_at",
            "next_attempt_at",
            "updated_at",
        ]
    )
    message.refresh_from_db(fields=["attempt_count"])


def _log(message: OutboundMessage, attempt: DeliveryAttempt) -> None:
    level = logging.INFO if attempt.outcome == Outcome.ACCEPTED else logging.WARNING
    logger.log(
        level,
        "message %s attempt %s via %s: %s%s",
        message.pk,
        attempt.number,
        attempt.provider,
        attempt.outcome,
        f" ({attempt.reply_code} {attempt.reply_text})"
        if attempt.reply_code
        else (f" ({attempt.error})" if attempt.error else ""),
    )


def validate_and_enqueue(
    messages: Sequence[EmailMessage],
    *,
    config: Config,
    provider: str | None,
    fail_silently: bool,
) -> list[OutboundMessage]:
    """Validate every message, then store the valid ones in one transaction.

    Without ``fail_silently`` one invalid message stores none of them (the caller sees the
    error and nothing is half-stored); with it, invalid ones are skipped and logged.
    """
    prepared = []
    for message in messages:
        try:
            prepared.append(prepare(message, config=config, provider=provider))
        except InvalidMessageError as exc:
            if not fail_silently:
                raise
            logger.warning("message not queued: %s", exc)
    if not prepared:
        return []
    return enqueue(prepared)
