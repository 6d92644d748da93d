"""Return messages whose worker vanished: due again, or recorded as ``unknown``.

Invariant: a message taken back here leaves ``sending`` under the give-up policy
(:func:`~.lifecycle.decide`), like any other return to waiting; one the database refuses
to move stays in ``sending`` with its lease over, for the next pass, and is never sent
meanwhile (only a claim sends, and a claim never takes ``sending``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from django.db import DatabaseError
from django.utils import timezone

from .. import signals
from ..conf import Config, RetryPolicy, get_config
from ..models import DeliveryAttempt, OutboundMessage
from ..smtp.classify import Outcome
from ..transactions import writing
from .lifecycle import Next, decide, waiting_status
from .states import OPEN_STATES, State, Status

logger = logging.getLogger(__name__)

#: Expired leases taken back per pass (the next pass takes the rest).
PER_PASS = 1000
LOST_WORKER = (
    "the worker stopped after the body was sent and before the reply was stored: "
    "the server may have the message"
)


def recover_expired_leases(
    *,
    config: Config | None = None,
    now: datetime | None = None,
    ids: Iterable[int] | None = None,
    not_before: datetime | None = None,
) -> int:
    """Return messages whose worker vanished (lease expired) to waiting; how many.

    If the body had started (``body_started_at``), the server may have the message: an
    ``unknown`` attempt is recorded, and the give-up policy and ``UNKNOWN_OUTCOME`` decide
    (retry after the backoff, flagged as a possible duplicate; hold for an operator; or
    fail past ``MAX_ATTEMPTS`` / ``MAX_AGE_SECONDS``). Otherwise no attempt was made: it is
    due again, at ``not_before`` if given (a paused provider's end). ``ids``: only these.
    """
    config = config or get_config()
    now = now or timezone.now()
    expired = OutboundMessage.objects.filter(status=Status.SENDING, lease_expires_at__lt=now)
    if ids is not None:
        expired = expired.filter(pk__in=list(ids))
    recovered, refused = 0, []
    for message in expired.order_by("lease_expires_at")[:PER_PASS]:
        try:
            recovered += _recover(message, config=config, now=now, not_before=not_before)
        except (DatabaseError, ValueError) as exc:
            refused.append(message.pk)
            error = exc
    if refused:
        logger.error(
            "lease recovery could not move message(s) %s; they stay in sending until the next pass",
            refused,
            exc_info=error,
        )
    return recovered


def _recover(
    message: OutboundMessage, *, config: Config, now: datetime, not_before: datetime | None
) -> int:
    attempt = None
    try:
        with writing():
            if not _take_back(message, now=now):
                return 0
            if message.body_started_at is None:
                _return_untried(message, config=config, now=now, not_before=not_before)
            else:
                attempt = _record_lost_worker(
                    message, config=config, now=now, not_before=not_before
                )
    except (DatabaseError, ValueError):
        if message.body_started_at is None:
            raise
        return _hold_without_attempt(message, now=now)
    if attempt is not None:  # after the commit: a receiver's query cannot undo it
        signals.attempt_finished.send(sender=OutboundMessage, message=message, attempt=attempt)
        if message.status == Status.FAILED:
            signals.message_failed.send(sender=OutboundMessage, message=message, attempt=attempt)
    return 1


def _hold_without_attempt(message: OutboundMessage, *, now: datetime) -> int:
    """The ``unknown`` attempt was refused: the server may have the message and no attempt
    row can say so. An operator decides; never a blind resend."""
    with writing():
        if not _take_back(message, now=now):
            return 0
        OutboundMessage.objects.filter(pk=message.pk).update(
            status=Status.HELD,
            next_attempt_at=None,
            body_started_at=None,
            updated_at=now,
            last_error="held for an operator: " + LOST_WORKER + " (and the database refused "
            "the attempt that says so)",
        )
    return 1


def _take_back(message: OutboundMessage, *, now: datetime) -> bool:
    """End the claim, if it is still the one that expired (compare-and-set)."""
    return bool(
        OutboundMessage.objects.filter(
            pk=message.pk, status=Status.SENDING, claim_token=message.claim_token
        ).update(claim_token="", lease_expires_at=None, updated_at=now)
    )


def policy_for(config: Config, name: str) -> RetryPolicy:
    """The provider's retry policy; the defaults for a provider no longer configured."""
    provider = config.providers.get(name)
    return provider.retry if provider is not None else RetryPolicy()


def _return_untried(
    message: OutboundMessage, *, config: Config, now: datetime, not_before: datetime | None
) -> None:
    decision = decide(
        attempts=message.attempt_count,
        counted=False,
        created_at=message.created_at,
        now=now,
        policy=policy_for(config, message.provider),
        unknown_outcome=config.unknown_outcome,
        outcome=None,
        not_before=not_before,
    )
    OutboundMessage.objects.filter(pk=message.pk).update(
        status=waiting_status(message.attempt_count),
        next_attempt_at=decision.retry_at,
        body_started_at=None,
        updated_at=now,
    )


def _record_lost_worker(
    message: OutboundMessage, *, config: Config, now: datetime, not_before: datetime | None
) -> DeliveryAttempt:
    attempts = message.attempt_count + 1
    attempt = DeliveryAttempt.objects.create(
        message=message,
        number=message.attempts.count() + 1,
        provider=message.provider,
        started_at=message.body_started_at,
        finished_at=now,
        outcome=Outcome.UNKNOWN,
        error=LOST_WORKER,
        possible_duplicate=True,
    )
    message.recipient_statuses.filter(state__in=OPEN_STATES).update(
        state=State.UNKNOWN, attempt=attempt, reply_text=LOST_WORKER
    )
    decision = decide(
        attempts=attempts,
        counted=True,
        created_at=message.created_at,
        now=now,
        policy=policy_for(config, message.provider),
        unknown_outcome=config.unknown_outcome,
        outcome=Outcome.UNKNOWN,
        not_before=not_before,
    )
    status, error = {
        Next.RETRY: (Status.RETRYING, LOST_WORKER),
        Next.HOLD: (Status.HELD, f"held for an operator ({decision.reason}): {LOST_WORKER}"),
        Next.FAIL: (
            Status.FAILED,
            f"gave up after {attempts} attempt(s) ({decision.reason}): {LOST_WORKER}",
        ),
    }[decision.next]
    OutboundMessage.objects.filter(pk=message.pk).update(
        status=status,
        attempt_count=attempts,
        next_attempt_at=decision.retry_at,
        body_started_at=None,
        last_error=error,
        updated_at=now,
    )
    message.status, message.attempt_count, message.last_error = status, attempts, error
    return attempt
