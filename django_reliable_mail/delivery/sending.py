"""Run the transport over claimed messages while their attempts are recorded.

The batch itself (connections, body-start marks, chunked recording, refills) is
``smtp.stream.run_stream``; this module gives it its database side (:class:`_BatchDatabase`)
and runs it either in the worker's SMTP helper process (``smtp.helper``: two cores) or in a
thread beside the calling one (``bridge.SyncBridge``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError
from django.utils import timezone

from .. import throttle
from ..bridge import SyncBridge
from ..conf import (
    Config,
    ProviderConfig,
    RateLimit,
    config_for_mailer,
    config_with_options,
    get_config,
)
from ..models import DeliveryAttempt, OutboundMessage
from ..smtp.classify import Outcome
from ..smtp.helper import HelperProcessError, SMTPHelper, shared_helper
from ..smtp.keeper import SessionKeeper
from ..smtp.sanitize import clean
from ..smtp.stream import (
    BODY_MARK_WINDOW,
    RECORD_CHUNK,
    RECORD_WITHIN_SECONDS,
    URGENT_CALLS,
    CallingStore,
    StreamPlan,
    run_stream,
)
from ..smtp.transport import AttemptResult, Envelope, ServerSettings
from . import rows
from .claiming import claim, fail_over, recipient_rows, release
from .recording import record_batch
from .recovery import recover_expired_leases
from .states import DISABLE_ONCE, OPEN_STATES, Status

logger = logging.getLogger(__name__)

#: Lease renewals per lease: a renewal may come late by two thirds of a lease (a database
#: call that keeps the worker's thread busy) before the lease runs out.
LEASE_RENEWALS = 3


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


def _mark_window(rate_limit: RateLimit | None) -> int:
    """Messages marked per commit: about a second's worth under a rate limit, so a crash
    does not flag messages that were still minutes from being sent."""
    if rate_limit is None:
        return BODY_MARK_WINDOW
    per_second = rate_limit.count / rate_limit.per_seconds
    return max(1, min(BODY_MARK_WINDOW, int(per_second)))


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


#: (provider, mailer, extensions disabled once, stored backend arguments as JSON)
GroupKey = tuple[str, str | None, tuple[str, ...], str]
#: Where a message keeps the backend arguments it was stored with (``get_connection(
#: host=…, use_tls=…)``): never a secret (see ``conf.SECRET_ARGUMENTS``).
CONNECTION_OPTIONS = "connection"


def _group_key(message: OutboundMessage) -> GroupKey:
    """Messages that can share connections: same provider, mailer, backend arguments and
    one-off overrides."""
    options = message.options or {}
    return (
        message.provider,
        options.get("mailer"),
        tuple(options.get(DISABLE_ONCE, ())),
        json.dumps(options.get(CONNECTION_OPTIONS) or {}, sort_keys=True),
    )


def _config_for_group(key: GroupKey, config: Config) -> Config:
    """The configuration a group's messages were stored under: their MAILERS entry's, or
    the backend arguments stored with them applied to their provider."""
    name, mailer, _, arguments = key
    if mailer:
        return config_for_mailer(mailer)[0]
    if arguments != "{}":
        return config_with_options(name, json.loads(arguments), alias=None)[0]
    return config


def deliver_due(
    *,
    config: Config | None = None,
    provider: str | None = None,
    ids: Iterable[int] | None = None,
    limit: int = 100,
    keep_going_seconds: float = 0,
    in_order: bool = False,
    sessions: SessionKeeper | None = None,
) -> RunSummary:
    """Claim due messages, send them per provider over reused connections, record.

    ``in_order`` (a backend's first attempts): each group goes over one connection, so a
    provider gets the messages in the order of their ids. With ``sessions`` that
    connection comes from and goes back to the keeper (``with connection:``).

    With ``keep_going_seconds``, a batch of one provider becomes a stream: the next batch of
    ``limit`` is claimed while the connections are still sending, until nothing of that
    provider is due or that many seconds have passed. The connections stay open throughout.
    A group whose batch fails is logged and its messages returned (:func:`_abort`); the
    other groups go on.
    """
    given = config
    config = config or get_config()
    summary = RunSummary()
    if keep_going_seconds > 0 and _helper_wanted(config, streaming=True):
        with suppress(OSError):
            shared_helper()  # a new helper starts up meanwhile (a tenth of a second)
    messages = claim(config=config, provider=provider, ids=ids, limit=limit)
    if in_order:
        messages.sort(key=lambda message: message.pk)
    summary.claimed = len(messages)
    groups: dict[GroupKey, list[OutboundMessage]] = {}
    for message in messages:
        groups.setdefault(_group_key(message), []).append(message)
    # Only a lone group streams: other groups' claimed messages would wait meanwhile.
    stream = keep_going_seconds > 0 and ids is None and len(groups) == 1
    for key, group in groups.items():
        summary.add(
            _deliver_group(
                key,
                group,
                config=config,
                given=given,
                refill_limit=limit if stream else 0,
                keep_going_seconds=keep_going_seconds,
                in_order=in_order,
                sessions=sessions,
            )
        )
    return summary


def _deliver_group(
    key: GroupKey,
    messages: list[OutboundMessage],
    *,
    config: Config,
    given: Config | None,
    refill_limit: int = 0,
    keep_going_seconds: float = 0,
    in_order: bool = False,
    sessions: SessionKeeper | None = None,
) -> RunSummary:
    """One group's batch; whatever goes wrong in it stays in it."""
    # Claimed and not yet recorded (whose leases need renewing). A stream keeps only these
    # in memory, however many messages pass through it.
    in_flight = {m.pk: m for m in messages}
    summary = RunSummary()
    group_config = config
    try:
        group_config = given or _config_for_group(key, config)
        database = _BatchDatabase(
            key,
            provider=group_config.provider(key[0]),
            config=group_config,
            refill_limit=refill_limit,
            in_flight=in_flight,
            summary=summary,
        )
        _send_group(
            database,
            messages,
            keep_going_seconds=keep_going_seconds,
            in_order=in_order,
            sessions=sessions,
        )
    except Exception as exc:
        summary.recovered += _abort(key[0], in_flight, config=group_config, error=exc)
    return summary


def _send_group(
    database: _BatchDatabase,
    messages: list[OutboundMessage],
    *,
    keep_going_seconds: float,
    in_order: bool = False,
    sessions: SessionKeeper | None = None,
) -> None:
    name, _, disable_once, _ = database.key
    provider, config, in_flight = database.provider, database.config, database.in_flight
    server = provider.server_settings(
        transcript_max_chars=config.transcript_max_chars,
        record=config.transcripts != "never",
    )
    if disable_once:
        # An operator's "retry once without these extensions".
        server = replace(
            server, disable_extensions=server.disable_extensions | frozenset(disable_once)
        )
    refill_limit = database.refill_limit
    plan = StreamPlan(
        max_connections=1 if in_order else provider.max_connections,
        max_messages_per_connection=provider.max_messages_per_connection,
        mark_window=_mark_window(provider.rate_limit),
        rate_limited=provider.rate_limit is not None,
        stream_seconds=keep_going_seconds if refill_limit else 0,
        backlog_limit=max(refill_limit, 2 * RECORD_CHUNK),
        lease_renew_seconds=config.lease_seconds / LEASE_RENEWALS,
        record_chunk=RECORD_CHUNK,
        record_within_seconds=RECORD_WITHIN_SECONDS,
    )
    batch = [(m.pk, envelope_for(m)) for m in messages]
    streaming = refill_limit > 0
    with _helper_for(config, server, streaming=streaming, beside=in_order) as helper:
        if helper is None:
            connections, untouched_keys = _run_beside(server, batch, plan, database, sessions)
        else:
            plan = replace(plan, record_eagerly=True)
            connections, untouched_keys = helper.run(server, batch, plan, database)
    summary = database.summary
    summary.connections = connections
    provider_failure = database.failure
    untouched = [in_flight[pk] for pk in untouched_keys]
    if provider_failure is not None:
        until = throttle.mark_degraded(
            name,
            provider_failure.pause_reason or provider_failure.error,
            hint_seconds=provider_failure.retry_after_seconds,
        )
        summary.released = release(untouched, until=until, reason=provider_failure.error)
        fail_over(config=config)
    else:
        if database.delivered:
            throttle.mark_healthy(name)
        summary.released = release(untouched, until=timezone.now())
    for pk in untouched_keys:
        in_flight.pop(pk, None)


def _abort(
    name: str, in_flight: dict[int, OutboundMessage], *, config: Config, error: Exception
) -> int:
    """A batch that ended in an exception: a helper process that died or failed it, a
    session's exception, a store call that raised, a configuration gone.

    Its messages not yet recorded are returned as lease recovery would return them (an
    ``unknown`` attempt for a marked body, under the give-up policy; the rest untried), and
    the provider pauses as after a provider-level failure: growing pauses, no attempt used
    up, and none of its messages due before the pause ends. A provider whose sessions fail
    before any reply can be classified is thus tried a few times a minute at most, not in a
    loop. Never raises: a database that refuses even this leaves the leases to run out.
    """
    logger.error(
        "provider %s: the batch failed (%s: %s); its messages were returned to the queue",
        name,
        type(error).__name__,
        error,
        exc_info=not isinstance(error, HelperProcessError),
    )
    try:
        until = throttle.mark_degraded(name, clean(f"a batch failed: {error}", limit=500))
        return _return_unfinished(list(in_flight.values()), config=config, until=until)
    except Exception:
        logger.exception("provider %s: the failed batch's messages wait for lease recovery", name)
        return 0


class _BatchDatabase:
    """The database side of one provider's batch (a :class:`~..smtp.stream.Store`, but
    synchronous): run in the worker's own thread, on its own connection."""

    def __init__(
        self,
        key: GroupKey,
        *,
        provider: ProviderConfig,
        config: Config,
        refill_limit: int,
        in_flight: dict[int, OutboundMessage],
        summary: RunSummary,
    ):
        self.key = key
        self.provider = provider
        self.config = config
        self.refill_limit = refill_limit
        self.in_flight = in_flight
        self.summary = summary
        self.failure: AttemptResult | None = None  # the last provider-level one
        self.delivered = False

    def claim_more(self) -> list[tuple[int, Envelope]]:
        same: list[OutboundMessage] = []
        others: list[OutboundMessage] = []
        name = self.key[0]
        for message in claim(config=self.config, provider=name, limit=self.refill_limit):
            (same if _group_key(message) == self.key else others).append(message)
        if others:  # another mailer or one-off override: not for these connections
            release(others, until=timezone.now())
        self.summary.claimed += len(same)
        self.in_flight.update((m.pk, m) for m in same)
        return [(m.pk, envelope_for(m)) for m in same]

    def record(self, chunk: list[tuple[int, AttemptResult]]) -> None:
        items = [(self.in_flight[pk], result) for pk, result in chunk]
        record_batch(items, provider=self.provider, config=self.config, return_attempts=False)
        summary = self.summary
        for message, result in items:
            self.in_flight.pop(message.pk, None)
            summary.attempts += 1
            _count(summary, message.status)
            if result.provider_level or result.pause_provider:
                self.failure = result
            if result.outcome in (Outcome.ACCEPTED, Outcome.PARTIAL):
                self.delivered = True

    def mark(self, keys: list[int]) -> None:
        rows.set_by_ids(OutboundMessage, keys, body_started_at=timezone.now())

    def reserve(self) -> float:
        assert self.provider.rate_limit is not None
        return throttle.reserve_slot(self.key[0], self.provider.rate_limit)

    def renew(self) -> None:
        # Read each time: a streaming batch adds messages as it goes.
        tokens = {m.claim_token for m in list(self.in_flight.values())}
        if not tokens:
            return
        try:
            OutboundMessage.objects.filter(claim_token__in=tokens, status=Status.SENDING).update(
                lease_expires_at=timezone.now() + timedelta(seconds=self.config.lease_seconds)
            )
        except DatabaseError as exc:  # the next renewal comes within a third of a lease
            logger.warning("provider %s: renewing leases failed: %s", self.key[0], exc)


def _run_beside(
    server: ServerSettings,
    batch: list[tuple[int, Envelope]],
    plan: StreamPlan,
    database: _BatchDatabase,
    sessions: SessionKeeper | None = None,
) -> tuple[int, list[int]]:
    """The SMTP side in a thread of this process (the keeper's, with ``sessions``), the
    database side in the calling one."""
    bridge = SyncBridge()

    def call(name: str, args: tuple[Any, ...]) -> Awaitable[Any]:
        function = getattr(database, name)
        return (bridge.call_urgent if name in URGENT_CALLS else bridge.call)(function, *args)

    outcome = bridge.run(
        lambda _: run_stream(server, batch, plan, CallingStore(call), sessions),
        loop=sessions.loop if sessions is not None else None,
    )
    return outcome.connections, [job.key for job in outcome.untouched]


@contextmanager
def _helper_for(
    config: Config, server: ServerSettings, *, streaming: bool, beside: bool = False
) -> Iterator[SMTPHelper | None]:
    """The helper process for this batch's SMTP side (a second core), if it gets one;
    never for a batch that must run ``beside`` (on kept sessions)."""
    if beside or server.oauth2_token is not None or not _helper_wanted(config, streaming=streaming):
        yield None  # (a token callable of the project's runs in the project's process)
        return
    try:
        helper = shared_helper()
    except OSError as exc:  # no Python to start it with (an embedding server's executable)
        logger.warning("no SMTP helper process (%s): sending from this process", exc)
        yield None
        return
    if not helper.lock.acquire(blocking=False):
        yield None  # another thread of this process is sending through it
        return
    try:
        yield helper
    finally:
        helper.lock.release()


def _helper_wanted(config: Config, *, streaming: bool) -> bool:
    if config.smtp_process == "always":
        return True
    return config.smtp_process == "auto" and streaming and _cores() > 1


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _return_unfinished(messages: list[OutboundMessage], *, config: Config, until: datetime) -> int:
    """Return claimed messages that were neither recorded nor released, as lease recovery
    would after a crash (a marked body may have gone out: ``unknown``, flagged as a
    possible duplicate), none of them due before ``until``."""
    tokens = {m.claim_token for m in messages}
    if not tokens:
        return 0
    ids = [m.pk for m in messages]
    OutboundMessage.objects.filter(
        pk__in=ids, claim_token__in=tokens, status=Status.SENDING
    ).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    return recover_expired_leases(config=config, ids=ids, not_before=until)


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


def deliver_messages(
    message_ids: Iterable[int],
    *,
    config: Config | None = None,
    in_order: bool = False,
    sessions: SessionKeeper | None = None,
) -> RunSummary:
    """Claim, send and record these messages (those still due), a batch at a time;
    ``in_order`` over one connection per provider (``sessions``: kept ones)."""
    ids = list(message_ids)
    summary = RunSummary()
    for start in range(0, max(len(ids), 1), IDS_PER_CLAIM):
        chunk = ids[start : start + IDS_PER_CLAIM]
        summary.add(
            deliver_due(
                config=config,
                ids=chunk,
                limit=max(len(chunk), 1),
                in_order=in_order,
                sessions=sessions,
            )
        )
    return summary
