"""Selecting messages from the command line: ids, status, provider, age."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import CommandError
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ..models import OutboundMessage

AGE = re.compile(r"^(\d+)([mhd])$")


def add_filter_arguments(parser: Any, *, default_status: str | None) -> None:
    statuses = [s.value for s in OutboundMessage.Status]
    parser.add_argument(
        "--status",
        choices=statuses,
        default=None,
        help=f"only messages in this status (default: {default_status})",
    )
    parser.add_argument("--provider", help="only this provider's messages")
    parser.add_argument("--since", help="only messages created since: 30m, 12h, 7d or a date")
    parser.add_argument("--limit", type=int, default=0, help="at most this many")


def since(value: str) -> datetime:
    match = AGE.match(value)
    if match:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return timezone.now() - timedelta(**{unit: int(match.group(1))})
    parsed = parse_datetime(value) or parse_datetime(value + "T00:00:00")
    if parsed is None:
        raise CommandError(f"--since {value!r}: expected 30m, 12h, 7d or a date like 2026-11-01.")
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed)


def filtered_messages(options: dict[str, Any]) -> QuerySet[OutboundMessage]:
    messages = OutboundMessage.objects.order_by("pk")
    if options.get("ids"):
        messages = messages.filter(pk__in=options["ids"])
    if options.get("status"):
        messages = messages.filter(status=options["status"])
    if options.get("provider"):
        messages = messages.filter(provider=options["provider"])
    if options.get("since"):
        messages = messages.filter(created_at__gte=since(options["since"]))
    return messages
