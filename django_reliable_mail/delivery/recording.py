"""Store attempts and move each message on: sent, retrying, held or failed.

Invariant: every message handed to :func:`record_batch` leaves ``sending`` with an attempt
row, or, when the database refuses even a reduced one, is handed to lease recovery, which
flags it; storing a chunk never fails the chunk. A refused chunk is stored again one
message at a time, each in its own transaction, and a message whose attempt is still
refused is stored without what the server said (:func:`_reduced`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import DatabaseError, connections, router
from django.db.models import Q
from django.utils import timezone

from .. import signals
from ..conf import Config, ProviderConfig
from ..models import DeliveryAttempt, OutboundMessage, RecipientStatus
from ..smtp.classify import Outcome
from ..smtp.sanitize import clean
from ..smtp.transport import AttemptResult
from ..transactions import writing
from . import recovery, rows
from .claiming import recipient_rows
from .lifecycle import Decision, Next, decide
from .states import DISABLE_ONCE, OPEN_STATES, State, Status

logger = logging.getLogger(__name__)

#: What a database raises when it refuses a row: its own errors (a constraint, a trigger,
#: NUL in PostgreSQL text) and the driver's encoding errors (a lone surrogate is refused
#: before it reaches the server, as a ``UnicodeEncodeError``).
STORE_ERRORS: tuple[type[Exception], ...] = (DatabaseError, ValueError)


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
_RECIPIENT_ATTRS = ["state", "reply_code", "reply_enhanced_code", "reply_text", "attempt_id"]


def record(
    message: OutboundMessage,
    result: AttemptResult,
    *,
    provider: ProviderConfig,
    config: Config,
    now: datetime | None = None,
) -> DeliveryAttempt | None:
    """Store one attempt and move its message on (see :func:`record_batch`); None when
    even a reduced attempt could not be stored and lease recovery took the message."""
    attempts = record_batch([(message, result)], provider=provider, config=config, now=now)
    return attempts[0] if attempts else None


@dataclass
class _Stored:
    """One attempt as stored: its row's values, and the instance if one was built."""

    message: OutboundMessage
    values: dict[str, Any]
    attempt: DeliveryAttempt | None


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
    a signal receiver wants them, and an empty list is returned. Never raises because the
    database refused a row: see the module's docstring.
    """
    now = now or timezone.now()
    store = _Store(
        provider=provider, config=config, now=now, build=return_attempts or _attempts_wanted()
    )
    try:
        stored = store.chunk(items)
    except STORE_ERRORS as exc:
        stored = store.one_by_one(items, exc)
    for one in stored:
        _announce(one)
    return [one.attempt for one in stored if one.attempt is not None] if return_attempts else []


def _announce(stored: _Stored) -> None:
    message, attempt = stored.message, stored.attempt
    _log(message, stored.values)
    if attempt is not None:
        signals.attempt_finished.send(sender=OutboundMessage, message=message, attempt=attempt)
    if message.status == Status.SENT:
        signals.message_sent.send(sender=OutboundMessage, message=message)
    elif message.status == Status.FAILED and attempt is not None:
        signals.message_failed.send(sender=OutboundMessage, message=message, attempt=attempt)


#: Kept of a refused attempt (:func:`_reduced`): our own values and the reply's code.
_REDUCED_FIELDS = (
    "message_id",
    "number",
    "started_at",
    "finished_at",
    "port",
    "reply_code",
    "outcome",
    "provider_level",
    "possible_duplicate",
)


class _Store:
    """Stores chunks of attempts for one provider; a chunk the database refuses is stored
    again one message at a time."""

    def __init__(
        self, *, provider: ProviderConfig, config: Config, now: datetime, build: bool
    ) -> None:
        self.provider = provider
        self.config = config
        self.now = now
        #: Whether to build attempt instances (for the caller, or a signal's receivers).
        self.build = build

    def chunk(
        self, items: Sequence[tuple[OutboundMessage, AttemptResult]], *, refused: str = ""
    ) -> list[_Stored]:
        """Store these attempts in one transaction, all or none; ``refused``: store them
        reduced, saying why. The messages in memory are as before when it raises."""
        saved = [_Saved(message) for message, _ in items]
        try:
            with writing():
                return self._write(items, refused)
        except BaseException:
            for one in saved:
                one.restore()
            raise

    def one_by_one(
        self, items: Sequence[tuple[OutboundMessage, AttemptResult]], error: Exception
    ) -> list[_Stored]:
        """After the database refused a chunk: each message in its own transaction, in
        full, else reduced, else handed to lease recovery. Logged once for the chunk."""
        stored: list[_Stored] = []
        reduced: list[int] = []
        recovered: list[int] = []
        note = clean(
            "the transcript and the server's replies could not be stored "
            f"({type(error).__name__}: {error})",
            limit=500,
        )
        for item in items:
            try:
                stored += self.chunk([item])
                continue
            except STORE_ERRORS:
                pass
            try:
                stored += self.chunk([item], refused=note)
                reduced.append(item[0].pk)
                continue
            except STORE_ERRORS:
                pass
            self._leave_to_recovery(*item)
            recovered.append(item[0].pk)
        logger.error(
            "storing a chunk of %d attempt(s) failed; stored one by one: %d in full, "
            "reduced (without transcript and replies): %s, left to lease recovery: %s",
            len(items),
            len(items) - len(reduced) - len(recovered),
            reduced or "none",
            recovered or "none",
            exc_info=error,
        )
        return stored

    def _leave_to_recovery(self, message: OutboundMessage, result: AttemptResult) -> None:
        """The last resort: the database refused the attempt even without the server's text.

        What the server said is lost; what is durable is the claim and the body-start mark.
        So the message goes the way of a worker that died: if its body went out (or may
        have), the mark is made sure of, the lease ends now, and lease recovery takes it at
        once. That stores an ``unknown`` attempt whose texts are all ours, flagged as a
        possible duplicate, and applies ``UNKNOWN_OUTCOME`` and the give-up policy: never a
        blind resend, and never one past the limits. A body that never went out is simply
        due again. Should the database refuse even that, the message stays in ``sending``
        with its lease over: only a claim sends, a claim never takes ``sending``, and every
        recovery pass (the dispatcher's, the send command's) tries it again.
        """
        body_out = result.body_sent or result.outcome in (
            Outcome.ACCEPTED,
            Outcome.PARTIAL,
            Outcome.UNKNOWN,
        )
        mine = Q(pk=message.pk, status=Status.SENDING, claim_token=message.claim_token)
        try:
            with writing():
                if body_out:
                    OutboundMessage.objects.filter(mine, body_started_at__isnull=True).update(
                        body_started_at=datetime.fromtimestamp(result.started_at, tz=UTC)
                    )
                OutboundMessage.objects.filter(mine).update(
                    lease_expires_at=self.now - timedelta(microseconds=1)
                )
            recovery.recover_expired_leases(config=self.config, now=self.now, ids=[message.pk])
        except STORE_ERRORS:
            pass  # (in the chunk's log line) the lease runs out; recovery tries again then

    def _write(
        self, items: Sequence[tuple[OutboundMessage, AttemptResult]], refused: str
    ) -> list[_Stored]:
        ids = [message.pk for message, _ in items]
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
            row = _attempt_values(
                message,
                result,
                number=tried + 1,
                possible_duplicate=result.outcome == Outcome.UNKNOWN
                or bool(unknown)
                or message.pk in overtaken,
                provider=self.provider,
                config=self.config,
            )
            values.append(_reduced(row, refused) if refused else row)
        pks = rows.insert_values(DeliveryAttempt, values)
        alias = router.db_for_write(DeliveryAttempt)
        changed_recipients, changed_messages = [], []
        for (message, result), attempt_pk in zip(items, pks, strict=True):
            statuses = {s.address: s for s in recipient_rows(message)}
            for address, outcome in result.recipients.items():
                status = statuses.get(address)
                if status is None:
                    continue
                status.state = _STATE_OF[outcome.state]
                status.reply_code = outcome.code
                status.reply_enhanced_code = "" if refused else outcome.enhanced_code
                status.reply_text = refused or outcome.text
                status.attempt_id = attempt_pk
                changed_recipients.append(status)
            if message.pk not in overtaken:
                states = [s.state for s in statuses.values()]
                error = refused or result.error
                _advance(message, result, states, error=error, store=self)
                changed_messages.append(message)
        rows.update(RecipientStatus, changed_recipients, RECIPIENT_FIELDS)
        rows.update(OutboundMessage, changed_messages, MESSAGE_FIELDS)
        # Building instances costs more than inserting the rows: only for someone who uses them.
        return [
            _Stored(message, row, _stored_attempt(pk, row, message, alias) if self.build else None)
            for pk, row, (message, _) in zip(pks, values, items, strict=True)
        ]


class _Saved:
    """A message's fields and its recipients' as they were before a transaction, to put
    back when it rolls back (the next try must not count the attempt twice)."""

    def __init__(self, message: OutboundMessage) -> None:
        self.message = message
        self.fields = {name: getattr(message, name) for name in MESSAGE_FIELDS}
        self.recipients = [
            (status, [getattr(status, name) for name in _RECIPIENT_ATTRS])
            for status in recipient_rows(message)
        ]

    def restore(self) -> None:
        for name, value in self.fields.items():
            setattr(self.message, name, value)
        for status, saved in self.recipients:
            for name, value in zip(_RECIPIENT_ATTRS, saved, strict=True):
                setattr(status, name, value)


def _reduced(values: dict[str, Any], note: str) -> dict[str, Any]:
    """An attempt row the database refused, without anything the server said: the outcome,
    the reply's code, the duplicate flag as computed, and why the rest is missing."""
    reduced = rows.new_values(DeliveryAttempt, **{k: values[k] for k in _REDUCED_FIELDS})
    reduced["provider"] = clean(values["provider"], limit=None)[:100]
    reduced["host"] = clean(values["host"], limit=None)[:255]
    reduced["error"] = note
    return reduced


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
    error: str,
    store: _Store,
) -> None:
    """Decide the message's next status, in memory (the caller saves in bulk)."""
    open_left = [s for s in states if s in OPEN_STATES]
    # A provider-level failure (auth broken, refused, quota) is not the message's fault:
    # it does not use up one of the message's attempts.
    counted = not result.provider_level
    if counted:
        message.attempt_count += 1
    message.lease_expires_at = None
    if DISABLE_ONCE in (message.options or {}):
        message.options = {k: v for k, v in message.options.items() if k != DISABLE_ONCE}
    message.claim_token = ""
    message.body_started_at = None
    message.last_error = error
    message.updated_at = store.now
    if not open_left:
        message.next_attempt_at = None
        if any(s == State.ACCEPTED for s in states):
            message.status = Status.SENT
            message.sent_at = store.now
        else:
            message.status = Status.FAILED
        return
    decision = decide(
        attempts=message.attempt_count,
        counted=counted,
        created_at=message.created_at,
        now=store.now,
        policy=store.provider.retry,
        unknown_outcome=store.config.unknown_outcome,
        outcome=result.outcome,
        hint_seconds=result.retry_after_seconds,
    )
    _apply(message, decision, error=error)


def _apply(message: OutboundMessage, decision: Decision, *, error: str) -> None:
    """Set what :func:`~.lifecycle.decide` answered for a message just tried."""
    message.next_attempt_at = decision.retry_at
    if decision.next == Next.HOLD:
        message.status = Status.HELD
        message.last_error = (
            f"held for an operator ({decision.reason}): the connection was lost after the "
            f"body was sent, so the server may have the message. {error}"
        )
    elif decision.next == Next.FAIL:
        message.status = Status.FAILED
        message.last_error = (
            f"gave up after {message.attempt_count} attempt(s) ({decision.reason}): {error}"
        )
    else:
        message.status = Status.RETRYING  # (it was just tried)


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
