"""What operators do to messages: retry, cancel, reroute, retry without an extension.

Shared by the admin actions and the management commands. Every action is recorded as a
:class:`MessageEvent` with who did it, and goes through the same claim rules as delivery:
a message being sent right now (``sending``) is never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from . import delivery, tasks
from .conf import Config, get_config
from .delivery import DISABLE_ONCE
from .delivery.lifecycle import Next, decide, waiting_status
from .delivery.recovery import policy_for
from .exceptions import ReliableMailConfigError
from .models import MessageEvent, OutboundMessage, RecipientStatus
from .smtp.capabilities import KNOWN_EXTENSIONS
from .transactions import writing

logger = logging.getLogger(__name__)
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
    config = get_config()
    for message in list(messages):
        with writing():
            changes = {
                "status": waiting_status(message.attempt_count),
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
            MessageEvent.objects.create(
                message=message,
                actor=actor,
                action="retry" if not provider else "reroute",
                detail=_retry_detail(
                    message, provider=provider, disabled=disabled, config=config, now=now
                ),
            )
            requeued.append(message.pk)
    if requeued:
        ids = list(requeued)
        transaction.on_commit(lambda: _wake(ids))
    return requeued


def _retry_detail(
    message: OutboundMessage,
    *,
    provider: str | None,
    disabled: list[str],
    config: Config,
    now: datetime,
) -> str:
    """What the retry's event says beyond "retry": the new provider, the extensions left
    out, and whether it overrides the give-up policy."""
    detail = []
    if provider is not None and provider != message.provider:
        detail.append(f"through provider {provider!r} (was {message.provider!r})")
    if disabled:
        detail.append("once without " + ", ".join(disabled))
    beyond = _beyond_the_limits(
        message, config=config, provider=provider or message.provider, now=now
    )
    if beyond:
        detail.append(beyond)
    return "; ".join(detail)


def _beyond_the_limits(
    message: OutboundMessage, *, config: Config, provider: str, now: datetime
) -> str:
    """What an operator's retry overrides: the give-up policy would not try it again."""
    decision = decide(
        attempts=message.attempt_count,
        counted=True,
        created_at=message.created_at,
        now=now,
        policy=policy_for(config, provider),
        unknown_outcome=config.unknown_outcome,
        outcome=None,
    )
    if decision.next != Next.FAIL:
        return ""
    return (
        f"beyond the give-up policy ({message.attempt_count} attempt(s) made; "
        f"{decision.reason}): one more attempt on an operator's word"
    )


def _wake(ids: list[int]) -> None:
    config = get_config()
    if config.mode != "immediate":
        tasks.wake(ids)
        return
    try:
        delivery.deliver_messages(ids, config=config)
    except Exception:  # the retry is stored: the dispatcher sends what this could not
        logger.exception("sending retried message(s) %s now failed; they wait in the queue", ids)


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
