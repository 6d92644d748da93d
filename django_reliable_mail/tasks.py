"""django-q2 entry points. They take ids and names only: the database is the source of truth.

Every task is safe to run twice (broker redelivery, a retried task): claiming is a
compare-and-set on the message row, so a message already claimed or finished is skipped.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from . import delivery

#: The django-q2 Schedule that runs :func:`dispatch`; created by migration 0003.
DISPATCH_SCHEDULE_NAME = "django_reliable_mail.dispatch"
WAKE_CHUNK = 200


def deliver(message_ids: list[int] | int) -> str:
    """Deliver these messages if they are still due."""
    ids = [message_ids] if isinstance(message_ids, int) else list(message_ids)
    summary = delivery.deliver_messages(ids)
    return f"{summary.attempts} attempt(s), {summary.sent} sent"


def deliver_due(provider: str | None = None, limit: int = 200) -> str:
    """Deliver what is due for one provider (or all), one batch."""
    summary = delivery.deliver_due(provider=provider, limit=limit)
    return f"{summary.attempts} attempt(s), {summary.sent} sent"


def dispatch() -> str:
    """The periodic safety net: return expired leases, wake due retries and lost wake-ups."""
    from django_q.tasks import async_task

    recovered = delivery.recover_expired_leases()
    due = (
        delivery.due_messages(now=timezone.now())
        .values("provider")
        .annotate(n=Count("id"))
        .order_by()
    )
    woken = 0
    for row in due:
        for _ in range(0, row["n"], WAKE_CHUNK):
            async_task(
                "django_reliable_mail.tasks.deliver_due",
                row["provider"],
                WAKE_CHUNK,
                group="reliable_mail",
            )
            woken += 1
    return f"recovered {recovered} expired lease(s), queued {woken} delivery task(s)"


def wake_in_transaction() -> bool:
    """True when the wake-up can be queued inside the enqueueing transaction itself.

    django-q2's ORM broker on our own database makes the task row part of the caller's
    transaction: a rollback removes it with the messages, a commit publishes both at once,
    and one commit is saved per send. Any other broker (Redis…) must be told after the
    commit, and a synchronous cluster (tests) would send before it.
    """
    from django.db import router
    from django_q.conf import Conf

    from .models import OutboundMessage

    return bool(Conf.ORM) and not Conf.SYNC and Conf.ORM == router.db_for_write(OutboundMessage)


def wake(message_ids: Iterable[int]) -> None:
    """Ask the queue to deliver these messages; called after the enqueueing commit."""
    from django_q.brokers import get_broker
    from django_q.tasks import async_task

    ids = list(message_ids)
    # Inside an atomic block django-q2's ORM broker does not close and reopen the database
    # connection around each task it queues (it does in autocommit mode), which would
    # otherwise double the cost of every send_mail().
    with transaction.atomic(savepoint=False):
        broker = get_broker()
        for start in range(0, len(ids), WAKE_CHUNK):
            async_task(
                "django_reliable_mail.tasks.deliver",
                ids[start : start + WAKE_CHUNK],
                group="reliable_mail",
                broker=broker,
            )
