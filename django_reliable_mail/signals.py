"""Signals sent as messages move. A receiver that raises is logged, never breaks delivery."""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger(__name__)


class _SafeSignal(Signal):
    """``send()`` that reports a failing receiver in the log instead of raising."""

    def send(self, sender: Any, **named: Any) -> list[tuple[Any, Any]]:
        responses = super().send_robust(sender, **named)
        for receiver, response in responses:
            if isinstance(response, Exception):
                logger.error(
                    "receiver %r of a django-reliable-mail signal raised %s: %s",
                    receiver,
                    type(response).__name__,
                    response,
                    exc_info=(type(response), response, response.__traceback__),
                )
        return responses


#: Sent after a message is stored. Args: ``message`` (OutboundMessage).
message_queued = _SafeSignal()
#: Sent after each attempt is recorded. Args: ``message``, ``attempt`` (DeliveryAttempt).
attempt_finished = _SafeSignal()
#: Sent when a message reaches ``sent``. Args: ``message``.
message_sent = _SafeSignal()
#: Sent when a message reaches ``failed``. Args: ``message``, ``attempt`` (the last one).
message_failed = _SafeSignal()
