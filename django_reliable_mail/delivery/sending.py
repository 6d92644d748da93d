"""Run the transport over claimed messages while their attempts are recorded."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from django.utils import timezone

from .. import throttle
from ..bridge import SyncBridge
from ..conf import Config, RateLimit, config_for_mailer, get_config
from ..models import DeliveryAttempt, OutboundMessage
from ..smtp.classify import Outcome
from ..smtp.pool import BatchOutcome, Job, send_batch
from ..smtp.transport import AttemptResult, Envelope
from . import rows
from .claiming import claim, fail_over, recipient_rows, release
from .recording import record_batch
from .states import DISABLE_ONCE, OPEN_STATES, Status

#: How many messages one ``body_started_at`` commit covers (see _BodyMarker). After a
#: crash, up to about two windows of messages marked but never sent count as ``unknown``.
BODY_MARK_WINDOW = 64
#: Attempts stored per transaction while a batch is still being sent…
RECORD_CHUNK = 200
#: …or as soon as the oldest unstored one is this old, whichever comes first.
RECORD_WITHIN_SECONDS = 1.0


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
    as ``unknown`` (possibly delivered) and retried, never silently dropped. The next window
    is committed in the background while half of the current one is still to be sent, so
    the connections seldom wait for a mark.
    """

    def __init__(self, bridge: SyncBridge, order: list[int], window: int = BODY_MARK_WINDOW):
        self.bridge = bridge
        self.window = window
        self.queue: deque[int] = deque()  # in sending order; may hold ids already marked
        self.unmarked: set[int] = set()
        self.marked_unsent: set[int] = set()  # committed or being committed, body not yet due
        # Windows being committed right now: a message in one of them waits for that commit
        # before its body goes out.
        self.committing: dict[int, asyncio.Future[None]] = {}
        self.commits: set[asyncio.Task[None]] = set()
        self.add(order)

    def add(self, message_ids: Iterable[int]) -> None:
        for pk in message_ids:
            self.queue.append(pk)
            self.unmarked.add(pk)

    def before_body_of(self, message_id: int) -> Callable[[], Awaitable[None]]:
        async def mark() -> None:
            self.marked_unsent.discard(message_id)
            durable = self.committing.get(message_id)
            if durable is None and message_id in self.unmarked:
                durable = self._commit_window(first=message_id)
            if len(self.marked_unsent) < self.window // 2:
                self._commit_window()  # the next window, ahead of need
            if durable is not None:
                await asyncio.shield(durable)  # raises if that commit failed
            # Otherwise it was marked with an earlier window (or an earlier recipient chunk).

        return mark

    def _commit_window(self, first: int | None = None) -> asyncio.Future[None] | None:
        ids = []
        if first is not None:
            self.unmarked.discard(first)
            ids.append(first)
        while len(ids) < self.window and self.queue:
            pk = self.queue.popleft()
            if pk in self.unmarked:
                self.unmarked.discard(pk)
                ids.append(pk)
        if not ids:
            return None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_consume_error)
        for pk in ids:
            self.committing[pk] = done
        self.marked_unsent.update(pk for pk in ids if pk != first)
        task = asyncio.ensure_future(self._commit(ids, done))
        self.commits.add(task)
        task.add_done_callback(self.commits.discard)
        return done

    async def _commit(self, ids: list[int], done: asyncio.Future[None]) -> None:
        try:
            await self.bridge.call_urgent(_mark_body_started, ids)
        except BaseException as exc:
            # Not known to be durable: no body of this window may go out. The failed future
            # stays, so every later caller for these messages raises too.
            done.set_exception(RuntimeError(f"marking bodies as started failed: {exc!r}"))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        done.set_result(None)
        for pk in ids:
            del self.committing[pk]

    def cancel(self) -> None:
        """Stop the commits still running (their messages will not be sent now)."""
        for task in list(self.commits):
            task.cancel()


def _mark_window(rate_limit: RateLimit | None) -> int:
    """Messages marked per commit: about a second's worth under a rate limit, so a crash
    does not flag messages that were still minutes from being sent."""
    if rate_limit is None:
        return BODY_MARK_WINDOW
    per_second = rate_limit.count / rate_limit.per_seconds
    return max(1, min(BODY_MARK_WINDOW, int(per_second)))


def _consume_error(future: asyncio.Future[None]) -> None:
    # Every waiter sees the error; nobody need be left to "retrieve" it.
    if not future.cancelled():
        future.exception()


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
        same: list[OutboundMessage] = []
        others: list[OutboundMessage] = []
        for message in claim(config=config, provider=name, limit=refill_limit):
            (same if _group_key(message) == key else others).append(message)
        if others:  # another mailer or one-off override: not for these connections
            release(others, until=timezone.now())
        summary.claimed += len(same)
        in_flight.update((m.pk, m) for m in same)
        return same

    async def run(bridge: SyncBridge) -> BatchOutcome:
        marker = _BodyMarker(bridge, [], window=_mark_window(provider.rate_limit))

        def jobs_for(batch: list[OutboundMessage]) -> list[Job]:
            marker.add(m.pk for m in batch)
            return [Job(m, envelope_for(m), marker.before_body_of(m.pk)) for m in batch]

        jobs = jobs_for(messages)
        # Results are stored in chunks while the connections keep sending: the database
        # work runs in this (the calling) thread, the SMTP work in the bridge's.
        ready: list[tuple[Job, AttemptResult]] = []
        wake = asyncio.Event()
        stored = asyncio.Event()  # set after each chunk is recorded
        backlog_limit = max(refill_limit, 2 * RECORD_CHUNK)
        sending_done = False

        refill = None
        if refill_limit:

            async def refill() -> list[Job]:
                # Claim more only while recording keeps up with sending: a long stream then
                # holds a bounded number of messages in memory.
                while len(ready) >= backlog_limit and not storing.done():
                    stored.clear()
                    await stored.wait()
                if time.monotonic() >= deadline or storing.done():
                    return []  # (a failed recorder ends the stream; its error is raised)
                return jobs_for(await bridge.call(claim_more))

        reserve = None
        if provider.rate_limit is not None:
            limit = provider.rate_limit

            async def reserve() -> float:
                return await bridge.call_urgent(throttle.reserve_slot, name, limit)

        def on_result(job: Job, result: AttemptResult) -> None:
            ready.append((job, result))
            if len(ready) >= RECORD_CHUNK:
                wake.set()

        async def recorder() -> None:
            try:
                while True:
                    try:
                        await asyncio.wait_for(wake.wait(), RECORD_WITHIN_SECONDS)
                        flush = sending_done
                    except TimeoutError:
                        flush = True  # a slow batch: store what is ready (each message's status)
                    wake.clear()
                    # Full chunks only while sending goes on: results that arrive during one
                    # chunk's transaction wait for the next full one, rather than going
                    # out a few at a time, each with a transaction's fixed cost.
                    while len(ready) >= RECORD_CHUNK or (flush and ready):
                        chunk = ready[:RECORD_CHUNK]
                        del ready[: len(chunk)]
                        await bridge.call(record_chunk, chunk)
                        stored.set()
                    if sending_done and not ready:
                        return
            finally:
                stored.set()  # a refill waiting for room must not wait for a dead recorder

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
            marker.cancel()
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


#: Messages claimed by id at once (each id is a statement parameter, and databases cap those).
IDS_PER_CLAIM = 500


def deliver_messages(message_ids: Iterable[int], *, config: Config | None = None) -> RunSummary:
    """Claim, send and record these messages (those still due), a batch at a time."""
    ids = list(message_ids)
    summary = RunSummary()
    for start in range(0, max(len(ids), 1), IDS_PER_CLAIM):
        chunk = ids[start : start + IDS_PER_CLAIM]
        summary.add(deliver_due(config=config, ids=chunk, limit=max(len(chunk), 1)))
    return summary
