"""Provider health and rate limits, shared by every worker on every host via the database.

Rate limit: a GCRA-style clock per provider (``ProviderState.next_send_at``). Reserving a
slot moves the clock forward by one emission interval (``per_seconds / count``) with a
compare-and-set UPDATE, so two workers can never take the same slot, on any database and
across hosts. Sends are therefore paced evenly: at most ``count + 1`` start in any window of
``per_seconds``.

Health: a provider-level failure (authentication broken, connection refused, quota) marks
the provider degraded for a growing pause; its messages are not claimed meanwhile, and it
recovers by itself when the pause ends and the next attempt succeeds.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from .conf import RateLimit
from .models import ProviderState

DEGRADED_BASE_SECONDS = 30
DEGRADED_MAX_SECONDS = 3600


def _state(name: str) -> ProviderState:
    state, _ = ProviderState.objects.get_or_create(name=name)
    return state


def reserve_slot(name: str, limit: RateLimit) -> float:
    """Take the provider's next send slot; returns how many seconds to wait for it."""
    interval = timedelta(seconds=limit.per_seconds / limit.count)
    state = _state(name)
    while True:
        now = timezone.now()
        current = state.next_send_at
        start = max(now, current) if current is not None else now
        unchanged = Q(next_send_at=current) if current is not None else Q(next_send_at=None)
        won = ProviderState.objects.filter(unchanged, pk=state.pk).update(
            next_send_at=start + interval
        )
        if won:
            return max((start - now).total_seconds(), 0.0)
        state.refresh_from_db(fields=["next_send_at"])


def mark_degraded(name: str, reason: str, *, hint_seconds: float | None = None) -> datetime:
    """Pause the provider; returns until when. Pauses grow 30 s, 60 s, … up to an hour."""
    state = _state(name)
    failures = state.consecutive_failures + 1
    pause = min(DEGRADED_BASE_SECONDS * 2 ** min(failures - 1, 20), DEGRADED_MAX_SECONDS)
    if hint_seconds is not None:
        pause = max(pause, hint_seconds)
    until = timezone.now() + timedelta(seconds=pause)
    ProviderState.objects.filter(pk=state.pk).update(
        degraded_until=until, degraded_reason=reason[:2000], consecutive_failures=failures
    )
    return until


def mark_healthy(name: str) -> None:
    ProviderState.objects.filter(name=name).filter(
        Q(consecutive_failures__gt=0) | Q(degraded_until__isnull=False)
    ).update(degraded_until=None, degraded_reason="", consecutive_failures=0)


def degraded_providers(now: datetime | None = None) -> dict[str, datetime]:
    now = now or timezone.now()
    return dict(
        ProviderState.objects.filter(degraded_until__gt=now).values_list("name", "degraded_until")
    )
