"""Is anything draining the queue? Due messages that nobody claims mean no worker runs.

Retries (and, in queue mode, every message) are sent by a worker: a django-q2 cluster or
``reliable_mail_send``. Without one, messages wait forever and nothing fails. A message is
*overdue* when it has been due for longer than ``STALLED_QUEUE_SECONDS`` (10 minutes by
default); the queue is *stalled* when some message is overdue and no worker attempt
started within that time either. In immediate mode the calling process makes every first
attempt, so only later attempts count as a worker's. A paused provider's messages are not
due, so they never count.

Read by the ``reliable_mail.W016`` check, the admin dashboard and ``reliable_mail_stats``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from .conf import Config, get_config
from .delivery.claiming import due_messages
from .models import DeliveryAttempt

__all__ = ["Stall", "stalled_queue"]


@dataclass(frozen=True)
class Stall:
    overdue: int
    #: When the longest-waiting message became due.
    oldest_due: datetime
    seconds: int

    def __str__(self) -> str:
        minutes = max(1, self.seconds // 60)
        return (
            f"{self.overdue} message(s) have been due for more than {minutes} minute(s) "
            f"(the oldest since {self.oldest_due:%Y-%m-%d %H:%M:%S %Z}) and no worker has "
            "sent anything meanwhile: is a worker running?"
        )

    hint = (
        "Start one: manage.py qcluster (django-q2), or manage.py reliable_mail_send --loop "
        "as a service or from cron. Retries need one in immediate mode too."
    )


def stalled_queue(*, config: Config | None = None, now: datetime | None = None) -> Stall | None:
    """The stall, if the queue is stalled; None when a worker is keeping up."""
    config = config or get_config()
    now = now or timezone.now()
    seconds = config.stalled_queue_seconds
    since = now - timedelta(seconds=seconds)
    overdue = due_messages(now=since)
    oldest = overdue.order_by("next_attempt_at").values_list("next_attempt_at", flat=True).first()
    if oldest is None:
        return None
    worked = DeliveryAttempt.objects.filter(started_at__gte=since)
    if config.mode == "immediate":
        worked = worked.filter(number__gt=1)
    if worked.exists():
        return None
    return Stall(overdue=overdue.count(), oldest_due=oldest, seconds=seconds)
