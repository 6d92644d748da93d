"""The service layer: store, claim, run the transport, record, schedule the retry.

Everything that touches the database goes through here, so the backend, the tasks, the
admin and the commands share one path. No transaction is ever held open while SMTP runs:
claiming and recording are two short transactions around the network work.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.mail import EmailMessage
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from . import rows, signals, throttle
from .bridge import SyncBridge
from .conf import Config, ProviderConfig, config_for_mailer, get_config
from .exceptions import InvalidMessageError
from .models import DeliveryAttempt, MessageEvent, OutboundMessage, RecipientStatus
from .options import DeliveryOptions, options_of
from .retry import retry_delay, should_give_up
from .serialize import SerializedMessage, serialize
from .smtp.classify import Outcome
from .smtp.pool import BatchOutcome, Job, send_batch
from .smtp.transport import AttemptResult, Envelope

logger = logging.getLogger(__name__)
#: How many messages one ``body_started_at`` commit covers (see _BodyMarker).
BODY_MARK_WINDOW = 32
#: Attempts stored per transaction while a batch is still being sent.
RECORD_CHUNK = 50
#: Message option set by an operator's "retry once without these extensions".
DISABLE_ONCE = "disable_extensions_once"

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


def _without_known_keys(prepared: Sequence[_Prepared]) -> list[_Prepared]:
    """Drop messages whose idempotency key is already stored (or repeated in this batch)."""
    keys = [p.options.idempotency_key for p in prepared if p.options.idempotency_key]
    seen = (
        set(
            OutboundMessage.objects.filter(idempotency_key__in=keys).values_list(
                "idempotency_key", flat=True
            )
        )
        if keys
        else set()
    )
    fresh = []
    for p in prepared:
        key = p.options.idempotency_key
        if key is not None:
            if key in seen:
                logger.info("message with idempotency key %r is already queued", key)
                continue
            seen.add(key)
        fresh.append(p)
    return fresh


def enqueue(prepared: Sequence[_Prepared], *, mailer: str | None = None) -> list[OutboundMessage]:
    """Store messages (status ``queued``) in the caller's transaction, all or none.

    A message whose idempotency key is already stored (within the retention window: purged
    messages take their keys with them) is not stored again. Two concurrent senders of the
    same key are settled by the unique constraint.
    """
    prepared = _without_known_keys(prepared)
    if not prepared:
        return []
    # A savepoint is only needed to survive a lost idempotency-key race inside the caller's
    # transaction; without keys it would cost two extra round trips per send.
    keyed = any(p.options.idempotency_key for p in prepared)
    try:
        with transaction.atomic(savepoint=keyed):
            created = _insert(prepared, mailer=mailer)
    except IntegrityError:
        if not any(p.options.idempotency_key for p in prepared):
            raise
        # Lost a race on a key: store one by one, skipping keys someone else stored first.
        created = []
        for one in _without_known_keys(prepared):
            try:
                with transaction.atomic():
                    created.extend(_insert([one], mailer=mailer))
            except IntegrityError:
                if one.options.idempotency_key is None:
                    raise
    for row in created:
        signals.message_queued.send(sender=OutboundMessage, message=row)
    return created


def _insert(prepared: Sequence[_Prepared], *, mailer: str | None) -> list[OutboundMessage]:
    now = timezone.now()
    created = [
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
            options={**_dsn_options(p.options), **({"mailer": mailer} if mailer else {})},
        )
        for p in prepared
    ]
    rows.insert(OutboundMessage, created)
    if any(row.pk is None for row in created):  # databases that return no ids
        raise RuntimeError("the database did not return primary keys from bulk_create")
    rows.insert(
        RecipientStatus,
        [
            RecipientStatus(message=row, address=address)
            for row in created
            for address in row.recipients
        ],
    )
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


def due_messages(*, now: datetime, provider: str | None = None, ids: Iterable[int] | None = None):
    """Messages that may be sent now: queued or retrying, due, provider not paused."""
    due = OutboundMessage.objects.filter(status__in=(Status.QUEUED, Status.RETRYING)).filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    )
    if ids is not None:
        due = due.filter(pk__in=list(ids))
    if provider is not None:
        due = due.filter(provider=provider)
    paused = throttle.degraded_providers(now)
    if paused:
        due = due.exclude(provider__in=list(paused))
    return due


def claim(
    *,
    config: Config,
    provider: str | None = None,
    ids: Iterable[int] | None = None,
    limit: int = 100,
    now: datetime | None = None,
) -> list[OutboundMessage]:
    """Move up to ``limit`` due messages to ``sending`` with a lease, in one short transaction.

    PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` so concurrent workers take disjoint rows
    without waiting. Elsewhere (SQLite): a conditional UPDATE (compare-and-set on the status)
    that only one writer can win per row. Either way the claim is marked with a token and
    read back by it, so a worker only ever sees the rows it won.
    """
    now = now or timezone.now()
    fail_over(config=config, now=now)
    token = uuid.uuid4().hex
    lease = now + timedelta(seconds=config.lease_seconds)
    due = due_messages(now=now, provider=provider, ids=ids).order_by(
        "-priority", "next_attempt_at", "id"
    )
    with transaction.atomic():
        if connection.features.has_select_for_update_skip_locked:
            due = due.select_for_update(skip_locked=True)
        picked = list(due.values_list("pk", flat=True)[:limit])
        if not picked:
            return []
        OutboundMessage.objects.filter(
            pk__in=picked, status__in=(Status.QUEUED, Status.RETRYING)
        ).update(
            status=Status.SENDING,
            lease_expires_at=lease,
            claim_token=token,
            body_started_at=None,
            updated_at=now,
        )
    claimed = list(
        OutboundMessage.objects.filter(
            pk__in=picked, claim_token=token, status=Status.SENDING
        ).order_by("-priority", "next_attempt_at", "id")
    )
    # One query for all recipients; prefetch_related builds a queryset per message.
    by_message: dict[int, list[RecipientStatus]] = {m.pk: [] for m in claimed}
    for status in RecipientStatus.objects.filter(message_id__in=list(by_message)):
        by_message[status.message_id].append(status)
    for message in claimed:
        message.recipient_rows = by_message[message.pk]
    return claimed


def recipient_rows(message: OutboundMessage) -> list[RecipientStatus]:
    """The message's recipient rows: loaded by :func:`claim`, or read now."""
    rows_ = getattr(message, "recipient_rows", None)
    if rows_ is None:
        rows_ = message.recipient_rows = list(message.recipient_statuses.all())
    return rows_


def fail_over(*, config: Config, now: datetime | None = None) -> int:
    """Move waiting messages of paused providers to their FALLBACK (if that one is up).

    Each moved message gets a ``failover`` event; its next attempt records the fallback as
    the provider that carried it.
    """
    now = now or timezone.now()
    paused = throttle.degraded_providers(now)
    moved = 0
    for name in paused:
        provider = config.providers.get(name)
        fallback = provider.fallback if provider else None
        if not fallback or fallback in paused:
            continue
        with transaction.atomic():
            waiting = list(
                OutboundMessage.objects.filter(
                    provider=name, status__in=(Status.QUEUED, Status.RETRYING)
                ).values_list("pk", flat=True)
            )
            if not waiting:
                continue
            OutboundMessage.objects.filter(
                pk__in=waiting, status__in=(Status.QUEUED, Status.RETRYING)
            ).update(provider=fallback, next_attempt_at=now, updated_at=now)
            MessageEvent.objects.bulk_create(
                MessageEvent(
                    message_id=pk,
                    actor="failover",
                    action="reroute",
                    detail=f"provider {name!r} is paused; sent through fallback {fallback!r}",
                )
                for pk in waiting
            )
        moved += len(waiting)
        logger.warning("failover: %s message(s) moved from %s to %s", len(waiting), name, fallback)
    return moved


def release(messages: Iterable[OutboundMessage], *, until: datetime, reason: str = "") -> int:
    """Give claimed messages back untried (no attempt is counted)."""
    released = 0
    for message in messages:
        released += OutboundMessage.objects.filter(
            pk=message.pk, status=Status.SENDING, claim_token=message.claim_token
        ).update(
            status=Status.RETRYING if message.attempt_count else Status.QUEUED,
            next_attempt_at=until,
            lease_expires_at=None,
            claim_token="",
            body_started_at=None,
            last_error=reason or message.last_error,
        )
    return released


# -- send ------------------------------------------------


def envelope_for(message: OutboundMessage) -> Envelope:
    open_addresses = [s.address for s in recipient_rows(message) if s.state in OPEN_STATES]
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


def _mark_body_started(message_ids: list[int]) -> None:
    rows.set_by_ids(OutboundMessage, message_ids, body_started_at=timezone.now())


class _BodyMarker:
    """Commits ``body_started_at`` before a body goes out, for a window of messages at once.

    The marker must be durable before the bytes leave; one commit per message would cost a
    round trip each. Marking the next few messages of the batch together is cheaper, and
    errs on the safe side: after a crash, a marked message that was never sent is recorded
    as ``unknown`` (possibly delivered) and retried, never silently dropped.
    """

    def __init__(self, bridge: SyncBridge, order: list[int], window: int = BODY_MARK_WINDOW):
        self.bridge = bridge
        self.unmarked: deque[int] = deque(order)  # in sending order
        self.window = window
        self.marked: set[int] = set()  # marked and not yet finished

    def add(self, message_ids: Iterable[int]) -> None:
        self.unmarked.extend(message_ids)

    def done(self, message_id: int) -> None:
        self.marked.discard(message_id)

    def before_body_of(self, message_id: int) -> Callable[[], Awaitable[None]]:
        async def mark() -> None:
            if message_id in self.marked:
                return
            ids = [message_id]
            while len(ids) < self.window and self.unmarked:
                pk = self.unmarked.popleft()
                if pk not in self.marked and pk != message_id:
                    ids.append(pk)
            self.marked.update(ids)
            await self.bridge.call(_mark_body_started, ids)

        return mark


@dataclass
class RunSummary:
    claimed: int = 0
    attempts: int = 0
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    held: int = 0
    released: int = 0
    recovered: int = 0
    connections: int = 0

    def add(self, other: RunSummary) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


GroupKey = tuple[str, str | None, tuple[str, ...]]


def _group_key(message: OutboundMessage) -> GroupKey:
    """Messages that can share connections: same provider, mailer and one-off overrides."""
    options = message.options or {}
    return (message.provider, options.get("mailer"), tuple(options.get(DISABLE_ONCE, ())))


def deliver_due(
    *,
    config: Config | None = None,
    provider: str | None = None,
    ids: Iterable[int] | None = None,
    limit: int = 100,
    keep_going_seconds: float = 0,
) -> RunSummary:
    """Claim due messages, send them per provider over reused connections, record.

    With ``keep_going_seconds``, a batch of one provider becomes a stream: the next batch of
    ``limit`` is claimed while the connections are still sending, until nothing of that
    provider is due or that many seconds have passed. The connections stay open throughout.
    """
    given = config
    config = config or get_config()
    summary = RunSummary()
    messages = claim(config=config, provider=provider, ids=ids, limit=limit)
    summary.claimed = len(messages)
    groups: dict[GroupKey, list[OutboundMessage]] = {}
    for message in messages:
        groups.setdefault(_group_key(message), []).append(message)
    # Only a lone group streams: other groups' claimed messages would wait meanwhile.
    stream = keep_going_seconds > 0 and ids is None and len(groups) == 1
    for key, group in groups.items():
        mailer = key[1]
        group_config = given or (config_for_mailer(mailer)[0] if mailer else config)
        summary.add(
            _deliver_group(
                key,
                group,
                config=group_config,
                refill_limit=limit if stream else 0,
                keep_going_seconds=keep_going_seconds,
            )
        )
    return summary


def _deliver_group(
    key: GroupKey,
    messages: list[OutboundMessage],
    *,
    config: Config,
    refill_limit: int = 0,
    keep_going_seconds: float = 0,
) -> RunSummary:
    name, _, disable_once = key
    summary = RunSummary()
    deadline = time.monotonic() + keep_going_seconds
    provider = config.provider(name)
    server = provider.server_settings(
        transcript_max_chars=config.transcript_max_chars,
        record=config.transcripts != "never",
    )
    if disable_once:
        # An operator's "retry once without these extensions".
        server = replace(
            server, disable_extensions=server.disable_extensions | frozenset(disable_once)
        )

    # Claimed and not yet recorded (whose leases need renewing). A stream keeps only these
    # in memory, however many messages pass through it.
    in_flight = {m.pk: m for m in messages}
    health: dict[str, Any] = {"failure": None, "delivered": False}

    def record_chunk(chunk: list[tuple[Job, AttemptResult]]) -> None:
        items = [(job.key, result) for job, result in chunk]
        record_batch(items, provider=provider, config=config)
        for message, result in items:
            in_flight.pop(message.pk, None)
            summary.attempts += 1
            _count(summary, message.status)
            if result.provider_level or result.pause_provider:
                health["failure"] = result
            if result.outcome in (Outcome.ACCEPTED, Outcome.PARTIAL):
                health["delivered"] = True

    def claim_more() -> list[OutboundMessage]:
        more = claim(config=config, provider=name, limit=refill_limit)
        others = [m for m in more if _group_key(m) != key]
        if others:  # another mailer or one-off override: not for these connections
            release(others, until=timezone.now())
        same = [m for m in more if _group_key(m) == key]
        summary.claimed += len(same)
        in_flight.update((m.pk, m) for m in same)
        return same

    async def run(bridge: SyncBridge) -> BatchOutcome:
        marker = _BodyMarker(bridge, [m.pk for m in messages])
        jobs = [Job(m, envelope_for(m), marker.before_body_of(m.pk)) for m in messages]
        refill = None
        if refill_limit:

            async def refill() -> list[Job]:
                if time.monotonic() >= deadline:
                    return []
                more = await bridge.call(claim_more)
                marker.add(m.pk for m in more)
                return [Job(m, envelope_for(m), marker.before_body_of(m.pk)) for m in more]

        reserve = None
        if provider.rate_limit is not None:
            limit = provider.rate_limit

            async def reserve() -> float:
                return await bridge.call(throttle.reserve_slot, name, limit)

        # Results are stored in chunks while the connections keep sending: the database
        # work runs in this (the calling) thread, the SMTP work in the bridge's.
        ready: list[tuple[Job, AttemptResult]] = []
        wake = asyncio.Event()
        sending_done = False

        def on_result(job: Job, result: AttemptResult) -> None:
            marker.done(job.key.pk)
            ready.append((job, result))
            if len(ready) >= RECORD_CHUNK:
                wake.set()

        async def recorder() -> None:
            while True:
                await wake.wait()
                wake.clear()
                while ready:
                    chunk = ready[:RECORD_CHUNK]
                    del ready[: len(chunk)]
                    await bridge.call(record_chunk, chunk)
                if sending_done:
                    return

        renewer = asyncio.create_task(_keep_leases(bridge, in_flight, config.lease_seconds))
        storing = asyncio.create_task(recorder())
        try:
            outcome = await send_batch(
                server,
                jobs,
                max_connections=provider.max_connections,
                max_messages_per_connection=provider.max_messages_per_connection,
                reserve_slot=reserve,
                on_result=on_result,
                refill=refill,
            )
        finally:
            sending_done = True
            wake.set()
            await storing
            renewer.cancel()
        return outcome

    batch = SyncBridge().run(run)
    summary.connections = batch.connections
    provider_failure = health["failure"]
    untouched = [job.key for job in batch.untouched]
    if provider_failure is not None:
        until = throttle.mark_degraded(
            name,
            provider_failure.pause_reason or provider_failure.error,
            hint_seconds=provider_failure.retry_after_seconds,
        )
        summary.released = release(untouched, until=until, reason=provider_failure.error)
        fail_over(config=config)
    else:
        if health["delivered"]:
            throttle.mark_healthy(name)
        summary.released = release(untouched, until=timezone.now())
    return summary


async def _keep_leases(
    bridge: SyncBridge, in_flight: dict[int, OutboundMessage], seconds: int
) -> None:
    """Extend the batch's leases while it is being sent (a rate-limited batch can outlast
    one lease). A worker that dies stops renewing, and its leases run out."""
    while True:
        await asyncio.sleep(seconds / 3)
        # Read each time: a streaming batch adds messages as it goes.
        tokens = {m.claim_token for m in list(in_flight.values())}
        if tokens:
            await bridge.call(_renew_leases, tokens, seconds)


def _renew_leases(tokens: set[str], seconds: int) -> None:
    OutboundMessage.objects.filter(claim_token__in=tokens, status=Status.SENDING).update(
        lease_expires_at=timezone.now() + timedelta(seconds=seconds)
    )


def _count(summary: RunSummary, status: str) -> None:
    field = {
        Status.SENT: "sent",
        Status.RETRYING: "retrying",
        Status.FAILED: "failed",
        Status.HELD: "held",
    }.get(status)
    if field:
        setattr(summary, field, getattr(summary, field) + 1)


def deliver_message(message_id: int, *, config: Config | None = None) -> DeliveryAttempt | None:
    """Claim, send and record one message. Returns its new attempt, or None if not claimed."""
    summary = deliver_due(config=config, ids=[message_id], limit=1)
    if not summary.attempts:
        return None
    return DeliveryAttempt.objects.filter(message_id=message_id).order_by("-number").first()


def deliver_messages(message_ids: Iterable[int], *, config: Config | None = None) -> RunSummary:
    ids = list(message_ids)
    return deliver_due(config=config, ids=ids, limit=max(len(ids), 1))


# -- recovery ------------------------------------------------


def recover_expired_leases(*, config: Config | None = None, now: datetime | None = None) -> int:
    """Return messages whose worker vanished (lease expired) to the queue.

    If the body had started (``body_started_at``), the server may have the message: an
    ``unknown`` attempt is recorded and the UNKNOWN_OUTCOME policy applies (retry, flagged
    as a possible duplicate; or hold for an operator). Otherwise it is simply due again.
    """
    config = config or get_config()
    now = now or timezone.now()
    recovered = 0
    expired = OutboundMessage.objects.filter(status=Status.SENDING, lease_expires_at__lt=now)
    for message in expired.order_by("lease_expires_at")[:1000]:
        with transaction.atomic():
            won = OutboundMessage.objects.filter(
                pk=message.pk, status=Status.SENDING, claim_token=message.claim_token
            ).update(claim_token="", lease_expires_at=None)
            if not won:
                continue
            recovered += 1
            if message.body_started_at is None:
                OutboundMessage.objects.filter(pk=message.pk).update(
                    status=Status.RETRYING if message.attempt_count else Status.QUEUED,
                    next_attempt_at=now,
                )
                continue
            _record_lost_worker(message, config=config, now=now)
    return recovered


def _record_lost_worker(message: OutboundMessage, *, config: Config, now: datetime) -> None:
    number = message.attempts.count() + 1
    error = (
        "the worker stopped after the body was sent and before the reply was stored: "
        "the server may have the message"
    )
    attempt = DeliveryAttempt.objects.create(
        message=message,
        number=number,
        provider=message.provider,
        started_at=message.body_started_at,
        finished_at=now,
        outcome=Outcome.UNKNOWN,
        error=error,
        possible_duplicate=True,
    )
    message.recipient_statuses.filter(state__in=OPEN_STATES).update(
        state=State.UNKNOWN, attempt=attempt, reply_text=error
    )
    hold = config.unknown_outcome == "hold"
    OutboundMessage.objects.filter(pk=message.pk).update(
        status=Status.HELD if hold else Status.RETRYING,
        attempt_count=F("attempt_count") + 1,
        next_attempt_at=None if hold else now,
        body_started_at=None,
        last_error=("held for an operator: " if hold else "") + error,
    )
    signals.attempt_finished.send(sender=OutboundMessage, message=message, attempt=attempt)


# -- record ------------------------------------------------


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
) -> list[DeliveryAttempt]:
    """Store a batch of attempts and move each message on: sent, retrying, held or failed.

    One transaction and a handful of statements for the whole batch (bulk insert of the
    attempts, bulk updates of recipients and messages), not a commit per message.
    """
    now = now or timezone.now()
    ids = [message.pk for message, _ in items]
    with transaction.atomic():
        current = rows.values_by_ids(OutboundMessage, ids, ["status", "claim_token"])
        history = {
            row["message_id"]: row
            for row in DeliveryAttempt.objects.filter(message_id__in=ids)
            .values("message_id")
            .annotate(n=Count("id"), unknown=Count("id", filter=Q(outcome=Outcome.UNKNOWN)))
            .order_by()
        }
        attempts, overtaken = [], set()
        for message, result in items:
            status_now, token_now = current[message.pk]
            # A worker slower than its lease: the message was recovered and claimed again.
            # The attempt happened and is stored; the message belongs to the new claim.
            if status_now == Status.SENDING and token_now != message.claim_token:
                overtaken.add(message.pk)
            past = history.get(message.pk, {"n": 0, "unknown": 0})
            attempts.append(
                _attempt_row(
                    message,
                    result,
                    number=past["n"] + 1,
                    possible_duplicate=result.outcome == Outcome.UNKNOWN
                    or bool(past["unknown"])
                    or message.pk in overtaken,
                    provider=provider,
                    config=config,
                )
            )
        rows.insert(DeliveryAttempt, attempts)
        changed_recipients, changed_messages = [], []
        for (message, result), attempt in zip(items, attempts, strict=True):
            statuses = {s.address: s for s in recipient_rows(message)}
            for address, outcome in result.recipients.items():
                status = statuses.get(address)
                if status is None:
                    continue
                status.state = _STATE_OF[outcome.state]
                status.reply_code = outcome.code
                status.reply_enhanced_code = outcome.enhanced_code
                status.reply_text = outcome.text
                status.attempt = attempt
                changed_recipients.append(status)
            if message.pk not in overtaken:
                states = [s.state for s in statuses.values()]
                _advance(message, result, states, provider=provider, config=config, now=now)
                changed_messages.append(message)
        rows.update(RecipientStatus, changed_recipients, RECIPIENT_FIELDS)
        rows.update(OutboundMessage, changed_messages, MESSAGE_FIELDS)
    for (message, _), attempt in zip(items, attempts, strict=True):
        _log(message, attempt)
        signals.attempt_finished.send(sender=OutboundMessage, message=message, attempt=attempt)
        if message.status == Status.SENT:
            signals.message_sent.send(sender=OutboundMessage, message=message)
        elif message.status == Status.FAILED:
            signals.message_failed.send(sender=OutboundMessage, message=message, attempt=attempt)
    return attempts


def _attempt_row(
    message: OutboundMessage,
    result: AttemptResult,
    *,
    number: int,
    possible_duplicate: bool,
    provider: ProviderConfig,
    config: Config,
) -> DeliveryAttempt:
    keep_transcript = config.transcripts == "always" or (
        config.transcripts == "failures" and result.outcome != Outcome.ACCEPTED
    )
    return DeliveryAttempt(
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
        possible_duplicate=possible_duplicate,
        transcript=result.transcript if keep_transcript else "",
    )


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
    mailer: str | None = None,
) -> tuple[list[OutboundMessage], int]:
    """Validate every message, then store the valid ones in one transaction.

    Without ``fail_silently`` one invalid message stores none of them (the caller sees the
    error and nothing is half-stored); with it, invalid ones are skipped and logged.
    Returns the stored rows and how many messages are accepted for delivery (a message
    whose idempotency key was already stored counts as accepted: it is on its way).
    """
    prepared: list[_Prepared] = []
    for message in messages:
        try:
            prepared.append(prepare(message, config=config, provider=provider))
        except InvalidMessageError as exc:
            if not fail_silently:
                raise
            logger.warning("message not queued: %s", exc)
    if not prepared:
        return [], 0
    return enqueue(prepared, mailer=mailer), len(prepared)
