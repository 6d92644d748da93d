"""May a message be tried again? The decision against an oracle, and every path that
returns a message to waiting asking it."""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from hypothesis import example, given
from hypothesis import strategies as st

from django_reliable_mail import operations, throttle
from django_reliable_mail.backends import EmailBackend
from django_reliable_mail.conf import RetryPolicy, get_config
from django_reliable_mail.delivery import claiming, lifecycle, recovery, sending
from django_reliable_mail.delivery.lifecycle import Next, decide
from django_reliable_mail.delivery.recording import record
from django_reliable_mail.models import MessageEvent, OutboundMessage
from django_reliable_mail.smtp.classify import Outcome
from django_reliable_mail.smtp.transport import AttemptResult, RecipientResult

from .test_backend import message
from .test_queue import queue_async, queue_config, queue_sync

Status = OutboundMessage.Status
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def oracle(*, attempts, counted, age, policy, unknown_outcome, outcome):
    """The give-up policy as DESIGN.md states it, written as plainly as possible."""
    if outcome == "unknown" and unknown_outcome == "hold":
        return Next.HOLD
    if counted and (attempts >= policy.max_attempts or age >= policy.max_age_seconds):
        return Next.FAIL
    return Next.RETRY


@given(
    attempts=st.integers(0, 12),
    counted=st.booleans(),
    age=st.integers(0, 200_000),
    max_attempts=st.integers(1, 10),
    max_age=st.integers(1, 100_000),
    base=st.sampled_from([0.5, 1, 60]),
    outcome=st.sampled_from([None, *(o.value for o in Outcome)]),
    unknown_outcome=st.sampled_from(["retry", "hold"]),
    hint=st.none() | st.integers(0, 7200),
    pause=st.none() | st.integers(-100, 7200),
)
@example(  # the "delivered 3 times, still retrying past MAX_ATTEMPTS 2" incident
    attempts=2, counted=True, age=5, max_attempts=2, max_age=86400, base=60,
    outcome="unknown", unknown_outcome="retry", hint=None, pause=None,
)  # fmt: skip
@example(  # an operator's retry past the limit, then a provider-level failure: it waits
    attempts=8, counted=False, age=5, max_attempts=8, max_age=86400, base=60,
    outcome="config_error", unknown_outcome="retry", hint=None, pause=30,
)  # fmt: skip
def test_the_decision_matches_the_oracle(
    attempts, counted, age, max_attempts, max_age, base, outcome, unknown_outcome, hint, pause
):
    policy = RetryPolicy(
        max_attempts=max_attempts, base_seconds=base, max_age_seconds=max_age, jitter=0
    )
    not_before = NOW + timedelta(seconds=pause) if pause is not None else None
    decision = decide(
        attempts=attempts,
        counted=counted,
        created_at=NOW - timedelta(seconds=age),
        now=NOW,
        policy=policy,
        unknown_outcome=unknown_outcome,
        outcome=outcome,
        hint_seconds=hint,
        not_before=not_before,
    )
    expected = oracle(
        attempts=attempts,
        counted=counted,
        age=age,
        policy=policy,
        unknown_outcome=unknown_outcome,
        outcome=outcome,
    )
    assert decision.next == expected
    if expected != Next.RETRY:
        assert decision.retry_at is None and decision.reason
        if expected == Next.FAIL:
            setting = "MAX_ATTEMPTS" if attempts >= max_attempts else "MAX_AGE_SECONDS"
            assert setting in decision.reason
        return
    # Due again: at once without an attempt; after the backoff (the hint a floor) after one;
    # never before the provider's pause ends.
    if outcome is None:
        wait = 0.0
    else:
        wait = min(base * 2 ** (max(attempts, 1) - 1), policy.max_seconds)
        wait = max(wait, hint or 0)
    due = NOW + timedelta(seconds=wait)
    assert decision.retry_at == (max(due, not_before) if not_before else due)
    assert decision.reason == ""


@given(
    attempts=st.integers(1, 12),
    seed=st.integers(0, 2**32),
    hint=st.none() | st.integers(0, 7200),
)
def test_after_an_attempt_the_wait_is_the_backoff_with_its_jitter(attempts, seed, hint):
    import random

    from django_reliable_mail.retry import retry_delay

    policy = RetryPolicy(max_attempts=20, jitter=0.2)
    decision = decide(
        attempts=attempts,
        counted=True,
        created_at=NOW,
        now=NOW,
        policy=policy,
        unknown_outcome="retry",
        outcome="transient_failure",
        hint_seconds=hint,
        rng=random.Random(seed),
    )
    wait = retry_delay(policy, attempts, hint_seconds=hint, rng=random.Random(seed))
    assert decision.retry_at == NOW + timedelta(seconds=wait)


def test_the_waiting_status_says_whether_the_message_was_tried():
    assert lifecycle.waiting_status(0) == Status.QUEUED
    assert lifecycle.waiting_status(1) == Status.RETRYING


# -- every path back to waiting -------------------------------------------------------------

MAX_ATTEMPTS = 3
MAX_AGE = 3600
BASE = 60


@pytest.fixture
def config(settings):
    settings.RELIABLE_MAIL = {
        **queue_config(
            main={
                "HOST": "127.0.0.1",
                "PORT": 2,
                "TLS": "none",
                "RETRY": {
                    "MAX_ATTEMPTS": MAX_ATTEMPTS,
                    "MAX_AGE_SECONDS": MAX_AGE,
                    "BASE_SECONDS": BASE,
                    "JITTER": 0,
                },
            }
        ),
    }
    queue_async(settings)
    yield get_config
    queue_sync()


def claimed(config, *, attempts, age, body_started):
    """A message of ``age`` seconds that has used ``attempts``, claimed now."""
    EmailBackend().send_messages([message()])
    OutboundMessage.objects.update(
        attempt_count=attempts,
        status=Status.RETRYING if attempts else Status.QUEUED,
        created_at=timezone.now() - timedelta(seconds=age),
    )
    (row,) = claiming.claim(config=config)
    if body_started:
        OutboundMessage.objects.update(body_started_at=timezone.now())
        row.body_started_at = timezone.now()
    return row


def transient_failure(row):
    address = row.recipients[0]
    return AttemptResult(
        outcome=Outcome.TRANSIENT_FAILURE,
        host="127.0.0.1",
        recipients={address: RecipientResult(address, "deferred", 451, "4.3.0 later", "data")},
        reply_code=451,
        reply_text="4.3.0 later",
        error="451 4.3.0 later",
        body_sent=True,
    )


def expire(row):
    OutboundMessage.objects.filter(pk=row.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )


def via_recording(config, row):
    attempt = record(row, transient_failure(row), provider=config.provider("main"), config=config)
    assert attempt == row.attempts.get() and attempt.outcome == "transient_failure"


def via_recording_unknown(config, row):
    """The connection was lost after the body: the server may have the message."""
    result = transient_failure(row)
    result.outcome = Outcome.UNKNOWN
    result.recipients = {
        a: RecipientResult(a, "unknown", None, "lost", "data") for a in result.recipients
    }
    attempt = record(row, result, provider=config.provider("main"), config=config)
    assert attempt == row.attempts.get() and attempt.outcome == "unknown"


def via_lease_recovery(config, row):
    expire(row)
    assert recovery.recover_expired_leases(config=config) == 1


def via_a_failed_batch(config, row):
    sending._abort("main", {row.pk: row}, config=config, error=RuntimeError("helper died"))


def via_release(config, row):
    claiming.release([row], until=timezone.now())


#: (path, body started, attempts before, age, UNKNOWN_OUTCOME) → status after, when due.
#: "backoff": after the retry delay; "now"; "pause": when the provider's pause ends.
PATHS = [
    # An attempt that failed: counted, the limits apply.
    (via_recording, True, 0, 10, "retry", Status.RETRYING, "backoff"),
    (via_recording, True, MAX_ATTEMPTS - 1, 10, "retry", Status.FAILED, None),
    (via_recording, True, 0, MAX_AGE + 1, "retry", Status.FAILED, None),
    (via_recording_unknown, True, 0, 10, "retry", Status.RETRYING, "backoff"),
    (via_recording_unknown, True, MAX_ATTEMPTS - 1, 10, "retry", Status.FAILED, None),
    (via_recording_unknown, True, MAX_ATTEMPTS - 1, 10, "hold", Status.HELD, None),
    # A worker that vanished after the body: an unknown attempt, counted, limits apply.
    (via_lease_recovery, True, 0, 10, "retry", Status.RETRYING, "backoff"),
    (via_lease_recovery, True, MAX_ATTEMPTS - 1, 10, "retry", Status.FAILED, None),
    (via_lease_recovery, True, 0, MAX_AGE + 1, "retry", Status.FAILED, None),
    (via_lease_recovery, True, MAX_ATTEMPTS - 1, 10, "hold", Status.HELD, None),
    # …before the body: no attempt, nothing counted, due again at once.
    (via_lease_recovery, False, 0, 10, "retry", Status.QUEUED, "now"),
    (via_lease_recovery, False, MAX_ATTEMPTS - 1, MAX_AGE + 1, "retry", Status.RETRYING, "now"),
    # A batch that failed (a helper that died): as lease recovery, after the pause.
    (via_a_failed_batch, True, 0, 10, "retry", Status.RETRYING, "pause"),
    (via_a_failed_batch, True, MAX_ATTEMPTS - 1, 10, "retry", Status.FAILED, None),
    (via_a_failed_batch, True, 0, MAX_AGE + 1, "retry", Status.FAILED, None),
    (via_a_failed_batch, True, 0, 10, "hold", Status.HELD, None),
    (via_a_failed_batch, False, MAX_ATTEMPTS - 1, MAX_AGE + 1, "retry", Status.RETRYING, "pause"),
    (via_a_failed_batch, False, 0, 10, "retry", Status.QUEUED, "pause"),
    # Given back untried: nothing counted.
    (via_release, False, 0, 10, "retry", Status.QUEUED, "now"),
    (via_release, False, MAX_ATTEMPTS - 1, MAX_AGE + 1, "retry", Status.RETRYING, "now"),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("path", "body_started", "attempts", "age", "unknown_outcome", "status", "due"),
    PATHS,
    ids=lambda value: getattr(value, "__name__", None),
)
def test_each_path_back_to_waiting_applies_the_policy(
    config, settings, path, body_started, attempts, age, unknown_outcome, status, due
):
    settings.RELIABLE_MAIL = {**settings.RELIABLE_MAIL, "UNKNOWN_OUTCOME": unknown_outcome}
    row = claimed(config(), attempts=attempts, age=age, body_started=body_started)
    before = timezone.now()
    path(config(), row)
    row.refresh_from_db()
    assert row.status == status
    assert (row.claim_token, row.lease_expires_at, row.body_started_at) == ("", None, None)
    assert row.updated_at >= before
    counted = body_started and path is not via_release
    assert row.attempt_count == attempts + counted
    assert row.attempts.count() == counted
    if counted and path is not via_recording:
        assert row.attempts.get().possible_duplicate
    if status == Status.FAILED:
        limit = "MAX_ATTEMPTS is 3" if age < MAX_AGE else "older than MAX_AGE_SECONDS (3600 s)"
        assert row.last_error.startswith(f"gave up after {row.attempt_count} attempt(s) ({limit})")
    elif status == Status.HELD:
        assert row.last_error.startswith("held for an operator (UNKNOWN_OUTCOME is 'hold')")
    elif path in (via_recording, via_recording_unknown):
        assert row.last_error == "451 4.3.0 later"
    if due is None:
        assert row.next_attempt_at is None
        return
    if due == "now":
        assert before <= row.next_attempt_at <= timezone.now()
    elif due == "backoff":
        wait = BASE * 2 ** (row.attempt_count - 1)
        assert row.next_attempt_at >= before + timedelta(seconds=wait)
    else:
        pause_end = throttle.degraded_providers()["main"]
        assert row.next_attempt_at >= pause_end > timezone.now()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("attempts", "age", "beyond"),
    [
        (1, 10, None),
        (MAX_ATTEMPTS, 10, "MAX_ATTEMPTS is 3"),
        (1, MAX_AGE + 1, "older than MAX_AGE_SECONDS (3600 s)"),
    ],
)
def test_an_operator_retry_may_go_beyond_the_limits_and_says_so(
    config, django_capture_on_commit_callbacks, attempts, age, beyond
):
    EmailBackend().send_messages([message()])
    OutboundMessage.objects.update(
        status=Status.FAILED,
        attempt_count=attempts,
        created_at=timezone.now() - timedelta(seconds=age),
    )
    with django_capture_on_commit_callbacks(execute=False):
        assert len(operations.retry(OutboundMessage.objects.all(), actor="alice")) == 1
    row = OutboundMessage.objects.get()
    assert row.status == Status.RETRYING and row.next_attempt_at <= timezone.now()
    detail = MessageEvent.objects.get(message=row).detail
    if beyond is None:
        assert "beyond" not in detail
    else:
        assert f"beyond the give-up policy ({attempts} attempt(s) made; {beyond})" in detail
