"""Take due messages for sending (a lease per claim), and give them back untried."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from .. import throttle
from ..conf import Config
from ..models import MessageEvent, OutboundMessage, RecipientStatus
from .states import Status

logger = logging.getLogger(__name__)


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
