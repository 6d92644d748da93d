"""Figures for the admin dashboard and the stats command: a handful of grouped queries."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import CharField, Count, F, Func, Q, Value
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone

from .health import stalled_queue
from .models import DeliveryAttempt, OutboundMessage

SUCCESS = ("accepted", "partial")


def statistics(now: datetime | None = None) -> dict[str, Any]:
    """Counts by status and provider, failure reasons and success rates (last 30 days)."""
    now = now or timezone.now()
    month = now - timedelta(days=30)
    by_status = dict(
        OutboundMessage.objects.values_list("status").annotate(n=Count("id")).order_by()
    )
    by_provider: dict[str, dict[str, int]] = defaultdict(dict)
    for provider, status, n in (
        OutboundMessage.objects.values_list("provider", "status").annotate(n=Count("id")).order_by()
    ):
        by_provider[provider][status] = n
    recent = DeliveryAttempt.objects.filter(started_at__gte=month)
    reasons = [
        {"reply_code": code, "enhanced_code": enhanced, "outcome": outcome, "count": n}
        for code, enhanced, outcome, n in recent.exclude(outcome__in=SUCCESS)
        .values_list("reply_code", "reply_enhanced_code", "outcome")
        .annotate(n=Count("id"))
        .order_by("-n")[:10]
    ]
    rates = []
    for provider, total, ok in (
        recent.values_list("provider")
        .annotate(total=Count("id"), ok=Count("id", filter=Q(outcome__in=SUCCESS)))
        .order_by("provider")
    ):
        rates.append(
            {
                "provider": provider,
                "attempts": total,
                "accepted": ok,
                "rate": round(100 * ok / total, 1) if total else None,
            }
        )
    day = now - timedelta(hours=24)
    return {
        "by_status": by_status,
        "by_provider": {p: dict(s) for p, s in sorted(by_provider.items())},
        "failure_reasons": reasons,
        "success_rates": rates,
        "attempts_24h": DeliveryAttempt.objects.filter(started_at__gte=day).count(),
        "failures_24h": DeliveryAttempt.objects.filter(started_at__gte=day)
        .exclude(outcome__in=SUCCESS)
        .count(),
    }


def _bucket(unit: str):
    """An expression for the UTC hour or day of ``started_at``. SQLite gets strftime, which
    runs in C; Django's Trunc there calls back into Python once per row."""
    if connection.vendor == "sqlite":
        pattern = "%Y-%m-%dT%H:00:00" if unit == "hour" else "%Y-%m-%dT00:00:00"
        return Func(Value(pattern), F("started_at"), function="strftime", output_field=CharField())
    trunc = TruncHour if unit == "hour" else TruncDay
    return trunc("started_at", tzinfo=UTC)


def _as_datetime(bucket: Any) -> datetime:
    if isinstance(bucket, str):
        return datetime.fromisoformat(bucket).replace(tzinfo=UTC)
    return bucket.astimezone(UTC)


def _series(unit: str, buckets: list[datetime]) -> list[dict[str, Any]]:
    rows = (
        DeliveryAttempt.objects.filter(started_at__gte=buckets[0])
        .annotate(bucket=_bucket(unit))
        .values_list("bucket")
        .annotate(total=Count("id"), failed=Count("id", filter=~Q(outcome__in=SUCCESS)))
        .order_by("bucket")
    )
    found = {_as_datetime(bucket): (total, failed) for bucket, total, failed in rows}
    return [
        {"at": b, "total": found.get(b, (0, 0))[0], "failed": found.get(b, (0, 0))[1]}
        for b in buckets
    ]


def chart(
    series: list[dict[str, Any]],
    *,
    width: int = 720,
    height: int = 160,
    label_every: int = 1,
    label_format: str = "%H",
) -> dict[str, Any]:
    """Bar geometry for a server-rendered SVG: attempts (grey) with failures (red) on top."""
    peak = max([point["total"] for point in series] + [1])
    slot = width / max(len(series), 1)
    bars = []
    for index, point in enumerate(series):
        total_h = round(height * point["total"] / peak, 1)
        failed_h = round(height * point["failed"] / peak, 1)
        bars.append(
            {
                "x": round(index * slot + 1, 1),
                "w": round(max(slot - 2, 1), 1),
                "total_y": round(height - total_h, 1),
                "total_h": total_h,
                "failed_y": round(height - failed_h, 1),
                "failed_h": failed_h,
                "label": point["at"].strftime(label_format) if index % label_every == 0 else "",
                "label_x": round(index * slot + slot / 2, 1),
                "title": f"{point['at']:%Y-%m-%d %H:%M}: {point['total']} attempts, "
                f"{point['failed']} failed",
            }
        )
    return {"bars": bars, "width": width, "height": height, "peak": peak, "svg_height": height + 18}


def dashboard_context(now: datetime | None = None) -> dict[str, Any]:
    now = (now or timezone.now()).astimezone(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    hours = [hour - timedelta(hours=23 - i) for i in range(24)]
    day = hour.replace(hour=0)
    days = [day - timedelta(days=29 - i) for i in range(30)]
    stall = stalled_queue(now=now)
    return {
        **statistics(now),
        "stalled": str(stall) if stall else "",
        "stalled_hint": stall.hint if stall else "",
        "chart_24h": chart(_series("hour", hours), label_every=3),
        "chart_30d": chart(_series("day", days), label_every=5, label_format="%d %b"),
    }
