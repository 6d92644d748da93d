"""django-q2 entry points. They take ids only: the database is the source of truth."""

from __future__ import annotations

from collections.abc import Iterable

from . import delivery


def deliver(message_id: int) -> str:
    """Deliver one message if it is still due; harmless when run twice (broker redelivery)."""
    attempt = delivery.deliver_message(message_id)
    return attempt.outcome if attempt is not None else "not claimed"


def wake(message_ids: Iterable[int]) -> None:
    """Ask the queue to deliver these messages (called after the enqueueing commit)."""
    from django_q.tasks import async_task

    for message_id in message_ids:
        async_task("django_reliable_mail.tasks.deliver", message_id, group="reliable_mail")
