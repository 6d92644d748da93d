"""When to try again: a pure backoff policy, no database, no clock of its own."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from .conf import RetryPolicy


def retry_delay(
    policy: RetryPolicy,
    attempts_so_far: int,
    *,
    hint_seconds: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt ``attempts_so_far + 1``.

    Exponential: base · 2^(n-1), linear: base · n, fixed: base; capped at ``max_seconds``;
    then spread by ±``jitter`` so that messages deferred together do not return together.
    A server's or a reply rule's hint (``hint_seconds``) is a floor.
    """
    n = max(attempts_so_far, 1)
    if policy.backoff == "exponential":
        delay = policy.base_seconds * (2 ** min(n - 1, 30))
    elif policy.backoff == "linear":
        delay = policy.base_seconds * n
    else:
        delay = policy.base_seconds
    delay = min(delay, policy.max_seconds)
    if policy.jitter:
        spread = (rng or random).uniform(-policy.jitter, policy.jitter)
        delay = delay * (1 + spread)
    if hint_seconds is not None:
        delay = max(delay, hint_seconds)
    return max(delay, 0.0)


def should_give_up(
    policy: RetryPolicy, *, attempts_so_far: int, created_at: datetime, now: datetime
) -> bool:
    """True when the message has used its attempts or is older than ``max_age_seconds``."""
    if attempts_so_far >= policy.max_attempts:
        return True
    return now - created_at >= timedelta(seconds=policy.max_age_seconds)
