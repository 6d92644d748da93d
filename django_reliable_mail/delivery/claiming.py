"""Take due messages for sending (a lease per claim), and give them back untried."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, connections, router
from django.db.models import Q
from django.utils import timezone

from .. import throttle
from ..conf import Config
from ..models import MessageBody, MessageEvent, OutboundMessage, RecipientStatus
from ..transactions import writing
from . import rows
from .lifecycle import waiting_status
from .states import Status

logger = logging.getLogger(__name__)


def due_messages(
    *,
    now: datetime,
    provider: str | None = None,
    ids: Iterable[int] | None = None,
    paused: dict[str, datetime] | None = None,
):
    """Messages that may be sent now: queued or retrying, due, provider not paused
    (``paused``: the paused providers, when the caller has read them already)."""
    due = OutboundMessage.objects.filter(status__in=(Status.QUEUED, Status.RETRYING)).filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    )
    if ids is not None:
        due = due.filter(pk__in=list(ids))
    if provider is not None:
        due = due.filter(provider=provider)
    if paused is None:
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
    that only one writer can win per row. Either way the claim is marked with a token, so a
    worker only ever sees the rows it won.
    """
    now = now or timezone.now()
    paused = throttle.degraded_providers(now)
    fail_over(config=config, now=now, paused=paused)
    token = uuid.uuid4().hex
    lease = now + timedelta(seconds=config.lease_seconds)
    connection = connections[router.db_for_write(OutboundMessage)]
    wanted = _Wanted(provider, None if ids is None else list(ids), limit, now, lease, token)
    if _updates_returning(connection):
        claimed = _claim_returning(connection, wanted, paused)
    else:
        claimed = _claim_by_queryset(wanted, paused)
    claimed = _with_bodies(claimed, wanted.now)
    _load_recipients(connection, claimed)
    return claimed


def _updates_returning(connection: Any) -> bool:
    """UPDATE … RETURNING: PostgreSQL, and SQLite from 3.35 (as is INSERT … RETURNING)."""
    return connection.vendor == "postgresql" or (
        connection.vendor == "sqlite" and connection.features.can_return_rows_from_bulk_insert
    )


@dataclass(frozen=True)
class _Wanted:
    """What one claim asks for, and the lease it gives."""

    provider: str | None
    ids: list[int] | None
    limit: int
    now: datetime
    lease: datetime
    token: str


def _claim_returning(
    connection: Any, wanted: _Wanted, paused: dict[str, datetime]
) -> list[OutboundMessage]:
    """The claim as one statement: it picks (the :func:`due_messages` query), leases and
    reads back the rows together."""
    if wanted.ids == []:
        return []
    meta = OutboundMessage._meta
    quote = connection.ops.quote_name
    table = quote(meta.db_table)

    def column(name: str) -> str:
        return quote(meta.get_field(name).column)

    def when(value: datetime) -> Any:
        return meta.get_field("next_attempt_at").get_db_prep_value(value, connection)

    with writing(using=connection.alias), connection.cursor() as cursor:
        pick = _picked(wanted, paused).values_list("pk", flat=True)
        if connection.features.has_select_for_update_skip_locked:
            pick = pick.select_for_update(skip_locked=True)
        pick_sql, pick_params = pick.query.get_compiler(connection.alias).as_sql()
        waiting = [Status.QUEUED.value, Status.RETRYING.value]
        cursor.execute(
            f"UPDATE {table} SET {column('status')} = %s, {column('lease_expires_at')} = %s, "
            f"{column('claim_token')} = %s, {column('body_started_at')} = NULL, "
            f"{column('updated_at')} = %s "
            f"WHERE {column('status')} IN (%s, %s) AND {column('id')} IN ({pick_sql}) "
            f"RETURNING {rows.columns(OutboundMessage, connection)}",
            [
                Status.SENDING.value,
                when(wanted.lease),
                wanted.token,
                when(wanted.now),
                *waiting,
                *pick_params,
            ],
        )
        claimed = rows.load(OutboundMessage, connection, cursor.fetchall())
    # RETURNING gives no order: the sending order is the queue's.
    claimed.sort(key=lambda m: (-m.priority, m.next_attempt_at or wanted.now, m.pk))
    return claimed


def _picked(wanted: _Wanted, paused: dict[str, datetime] | None = None):
    """The due messages this claim takes, in queue order."""
    due = due_messages(now=wanted.now, provider=wanted.provider, ids=wanted.ids, paused=paused)
    return due.order_by("-priority", "next_attempt_at", "id")[: wanted.limit]


def _claim_by_queryset(wanted: _Wanted, paused: dict[str, datetime]) -> list[OutboundMessage]:
    """The claim for databases without UPDATE … RETURNING: pick, update, read back."""
    with writing():
        due = _picked(wanted, paused)
        if connection.features.has_select_for_update_skip_locked:
            due = due.select_for_update(skip_locked=True)
        picked = list(due.values_list("pk", flat=True))
        if not picked:
            return []
        OutboundMessage.objects.filter(
            pk__in=picked, status__in=(Status.QUEUED, Status.RETRYING)
        ).update(
            status=Status.SENDING,
            lease_expires_at=wanted.lease,
            claim_token=wanted.token,
            body_started_at=None,
            updated_at=wanted.now,
        )
    return list(
        OutboundMessage.objects.filter(
            pk__in=picked, claim_token=wanted.token, status=Status.SENDING
        ).order_by("-priority", "next_attempt_at", "id")
    )


def _load_recipients(connection: Any, claimed: list[OutboundMessage]) -> None:
    """All the claimed messages' recipient rows in one query (``prefetch_related`` would
    build a queryset per message)."""
    by_message: dict[int, list[RecipientStatus]] = {m.pk: [] for m in claimed}
    if not by_message:
        return
    meta = RecipientStatus._meta
    quote = connection.ops.quote_name
    marks = ", ".join(["%s"] * len(by_message))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {rows.columns(RecipientStatus, connection)} FROM {quote(meta.db_table)} "
            f"WHERE {quote(meta.get_field('message').column)} IN ({marks}) "
            f"ORDER BY {quote(meta.pk.column)}",
            list(by_message),
        )
        for status in rows.load(RecipientStatus, connection, cursor.fetchall()):
            by_message[status.message_id].append(status)
    for message in claimed:
        message.recipient_rows = by_message[message.pk]


def _with_bodies(claimed: list[OutboundMessage], now: datetime) -> list[OutboundMessage]:
    """The claimed messages with their bodies, read in one query. A message whose body row
    is gone (deleted by hand: purged messages are never requeued) is failed, not sent
    empty."""
    bodies = rows.values_by_ids(MessageBody, [m.pk for m in claimed], ["mime"])
    missing = [m.pk for m in claimed if m.pk not in bodies]
    if missing:
        logger.error("message(s) %s have no stored body; failed without sending", missing)
        with writing():
            OutboundMessage.objects.filter(pk__in=missing, status=Status.SENDING).update(
                status=Status.FAILED,
                lease_expires_at=None,
                claim_token="",
                next_attempt_at=None,
                last_error="no stored body: there is nothing to send",
                updated_at=now,
            )
    for message in claimed:
        if message.pk in bodies:
            message._mime = bytes(bodies[message.pk][0])
    return [m for m in claimed if m.pk in bodies]


def recipient_rows(message: OutboundMessage) -> list[RecipientStatus]:
    """The message's recipient rows: loaded by :func:`claim`, or read now."""
    rows_ = getattr(message, "recipient_rows", None)
    if rows_ is None:
        rows_ = message.recipient_rows = list(message.recipient_statuses.all())
    return rows_


def fail_over(
    *, config: Config, now: datetime | None = None, paused: dict[str, datetime] | None = None
) -> int:
    """Move waiting messages of paused providers to their FALLBACK (if that one is up).

    Each moved message gets a ``failover`` event; its next attempt records the fallback as
    the provider that carried it.
    """
    now = now or timezone.now()
    if paused is None:
        paused = throttle.degraded_providers(now)
    moved = 0
    for name in paused:
        provider = config.providers.get(name)
        fallback = provider.fallback if provider else None
        if not fallback or fallback in paused:
            continue
        with writing():
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
    """Give claimed messages back untried, due at ``until`` (no attempt is counted, so the
    give-up policy has nothing to apply: :func:`~.lifecycle.decide` would say wait)."""
    released = 0
    now = timezone.now()
    for message in messages:
        released += OutboundMessage.objects.filter(
            pk=message.pk, status=Status.SENDING, claim_token=message.claim_token
        ).update(
            status=waiting_status(message.attempt_count),
            next_attempt_at=until,
            lease_expires_at=None,
            claim_token="",
            body_started_at=None,
            last_error=reason or message.last_error,
            updated_at=now,
        )
    return released
