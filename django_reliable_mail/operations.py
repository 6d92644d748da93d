"""What operators do to messages: retry, cancel, reroute, retry without an extension.

Shared by the admin actions and the management commands. Every action is recorded as a
:class:`MessageEvent` with who did it, and goes through the same claim rules as delivery:
a message being sent right now (``sending``) is never touched.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from . import delivery, tasks
from .conf import get_config
from .delivery import DISABLE_ONCE
from .exceptions import ReliableMailConfigError
from .models import MessageEvent, OutboundMessage, RecipientStatus
from .smtp.capabilities import KNOWN_EXTENSIONS
from .transactions import writing

Status = OutboundMessage.Status
RETRYABLE = (Status.FAILED, Status.RETRYING, Status.HELD, Status.QUEUED, Status.CANCELLED)
CANCELLABLE = (Status.QUEUED, Status.RETRYING, Status.HELD)


def retry(
    messages: QuerySet[OutboundMessage] | Iterable[OutboundMessage],
    *,
    actor: str,
    provider: str | None = None,
    disable_extensions: Iterable[str] = (),
) -> list[int]:
    """Make messages due now (optionally through another provider, or once without some
    extensions). Recipients that were not accepted get another chance; accepted ones are
    never sent to again. A message whose body was purged (``--bodies-only``) has nothing
    left to send and is skipped. Returns the ids that were requeued."""
    if provider is not None:
        get_config().provider(provider)
    disabled = sorted({e.upper() for e in disable_extensions})
    unknown = [e for e in disabled if e not in KNOWN_EXTENSIONS]
    if unknown:
        raise ReliableMailConfigError(f"Unknown extension(s) to disable: {', '.join(unknown)}.")
    requeued = []
    now = timezone.now()
    for message in list(messages):
        with writing():
            changes = {
                "status": Status.RETRYING if message.attempt_count else Status.QUEUED,
                "next_attempt_at": now,
                "updated_at": now,
            }
            if provider is not None:
                changes["provider"] = provider
            options = dict(message.options or {})
            if disabled:
                options[DISABLE_ONCE] = disabled
                changes["options"] = options
            won = OutboundMessage.objects.filter(
                pk=message.pk, status__in=RETRYABLE, body__isnull=False
            ).update(**changes)
            if not won:
                continue
            message.recipient_statuses.exclude(state=RecipientStatus.State.ACCEPTED).update(
                state=RecipientStatus.State.PENDING
            )
            detail = []
            if provider is not None and provider != message.provider:
                detail.append(f"through provider {provider!r} (was {message.provider!r})")
            if disabled:
                detail.append("once without " + ", ".join(disabled))
            MessageEvent.objects.create(
                message=message,
                actor=actor,
                action="retry" if not provider else "reroute",
                detail="; ".join(detail),
            )
            requeued.append(message.pk)
    if requeued:
        ids = list(requeued)
        transaction.on_commit(lambda: _wake(ids))
    return requeued


def _wake(ids: list[int]) -> None:
    config = get_config()
    if config.mode == "immediate":
        delivery.deliver_messages(ids, config=config)
    else:
        tasks.wake(ids)


def cancel(
    messages: QuerySet[OutboundMessage] | Iterable[OutboundMessage], *, actor: str
) -> list[int]:
    """Stop messages that have not been sent. Returns the ids cancelled."""
    cancelled = []
    for message in list(messages):
        with writing():
            won = OutboundMessage.objects.filter(pk=message.pk, status__in=CANCELLABLE).update(
                status=Status.CANCELLED, next_attempt_at=None, updated_at=timezone.now()
            )
            if won:
                MessageEvent.objects.create(message=message, actor=actor, action="cancel")
                cancelled.append(message.pk)
    return cancelled
