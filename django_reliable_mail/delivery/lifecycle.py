"""May this message be tried again? The one decision, for every path back to waiting.

Recording an attempt, lease recovery, the return of a failed batch's messages, an
operator's retry: each asks :func:`decide` and writes what it answers, so ``MAX_ATTEMPTS``,
``MAX_AGE_SECONDS`` and ``UNKNOWN_OUTCOME`` hold on all of them. Pure: no database, no
clock of its own (the caller passes ``now``), nothing but the values given.

The rules, in order:

1. an ``unknown`` outcome (the server may have the message) with ``UNKNOWN_OUTCOME: "hold"``
   is held for an operator, whatever the counts say;
2. an attempt that counts (the message was tried; not a provider-level failure, not a
   return without an attempt) gives up once ``MAX_ATTEMPTS`` attempts are used or the
   message is ``MAX_AGE_SECONDS`` old;
3. otherwise it waits: after an attempt, for the backoff (a server's hint is a floor);
   without one, not at all; never before ``not_before`` (a provider's pause).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from ..conf import RetryPolicy
from ..retry import retry_delay, should_give_up
from ..smtp.classify import Outcome
from .states import Status

__all__ = ["Decision", "Next", "decide", "waiting_status"]


class Next(StrEnum):
    RETRY = "retry"
    FAIL = "fail"
    HOLD = "hold"


@dataclass(frozen=True)
class Decision:
    next: Next
    #: When the message is due again (``RETRY`` only).
    retry_at: datetime | None = None
    #: Why it fails or is held, naming the setting ("" for a retry): "MAX_ATTEMPTS is 8".
    reason: str = ""


def decide(
    *,
    attempts: int,
    counted: bool,
    created_at: datetime,
    now: datetime,
    policy: RetryPolicy,
    unknown_outcome: str,
    outcome: str | None,
    hint_seconds: float | None = None,
    not_before: datetime | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """What happens to a message that is going back to waiting.

    ``attempts``: the attempts it has used, this one included; ``counted``: whether this
    return used one up; ``outcome``: this attempt's outcome, None when it was returned
    without an attempt.
    """
    if outcome == Outcome.UNKNOWN and unknown_outcome == "hold":
        return Decision(Next.HOLD, reason="UNKNOWN_OUTCOME is 'hold'")
    if counted and should_give_up(policy, attempts_so_far=attempts, created_at=created_at, now=now):
        if attempts >= policy.max_attempts:
            why = f"MAX_ATTEMPTS is {policy.max_attempts}"
        else:
            why = f"older than MAX_AGE_SECONDS ({policy.max_age_seconds:g} s)"
        return Decision(Next.FAIL, reason=why)
    retry_at = now
    if outcome is not None:
        delay = retry_delay(policy, max(attempts, 1), hint_seconds=hint_seconds, rng=rng)
        retry_at = now + timedelta(seconds=delay)
    if not_before is not None:
        retry_at = max(retry_at, not_before)
    return Decision(Next.RETRY, retry_at=retry_at)


def waiting_status(attempt_count: int) -> str:
    """The status a message waits in: ``retrying`` once it was tried, else ``queued``."""
    return Status.RETRYING if attempt_count else Status.QUEUED
