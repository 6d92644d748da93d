"""Return messages whose worker vanished: requeued, or recorded as ``unknown``."""

from __future__ import annotations

from datetime import datetime

from django.db.models import F
from django.utils import timezone

from .. import signals
from ..conf import Config, get_config
from ..models import DeliveryAttempt, OutboundMessage
from ..smtp.classify import Outcome
from ..transactions import writing
from .states import OPEN_STATES, State, Status


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
        with writing():
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
