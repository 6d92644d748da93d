"""Reply parsing and classification, and the backoff policy: pure functions."""

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from django_reliable_mail.conf import RetryPolicy
from django_reliable_mail.retry import retry_delay, should_give_up
from django_reliable_mail.smtp.capabilities import Capabilities, parse_ehlo
from django_reliable_mail.smtp.classify import (
    Reply,
    ReplyRule,
    Verdict,
    classify_reply,
    combine_outcome,
    parse_enhanced_code,
    parse_queue_id,
)

codes = st.integers(min_value=200, max_value=599)
enhanced = st.tuples(st.sampled_from("245"), st.integers(0, 999), st.integers(0, 999)).map(
    lambda t: f"{t[0]}.{t[1]}.{t[2]}"
)
text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=80)


@given(enhanced, text)
def test_enhanced_code_is_split_off(code, rest):
    found, detail = parse_enhanced_code(f"{code} {rest}")
    assert found == code
    assert detail == rest.strip()


@given(text)
def test_text_without_enhanced_code_is_kept_whole(rest):
    found, detail = parse_enhanced_code("Ok " + rest)
    assert found == ""
    assert detail == ("Ok " + rest).strip()


@given(codes, text)
def test_class_follows_the_first_digit_without_rules(code, rest):
    verdict = classify_reply(Reply(code, rest)).verdict
    expected = {2: Verdict.OK, 3: Verdict.OK, 4: Verdict.TRANSIENT, 5: Verdict.PERMANENT}
    assert verdict == expected[code // 100]


def test_rules_match_code_class_enhanced_prefix_and_text():
    quota = ReplyRule(Verdict.PROVIDER, code="550", enhanced="5.4.5")
    assert classify_reply(Reply(550, "5.4.5 Daily quota"), [quota]).verdict == Verdict.PROVIDER
    assert classify_reply(Reply(550, "5.1.1 No user"), [quota]).verdict == Verdict.PERMANENT
    policy = ReplyRule(Verdict.PERMANENT, code="4xx", text="suppression list")
    assert classify_reply(Reply(451, "4.7.1 On the suppression list"), [policy]).verdict == (
        Verdict.PERMANENT
    )
    prefix = ReplyRule(Verdict.PROVIDER, enhanced="5.7.")
    assert classify_reply(Reply(535, "5.7.8 Bad credentials"), [prefix]).verdict == (
        Verdict.PROVIDER
    )


def test_queue_ids():
    assert parse_queue_id("2.0.0 Ok: queued as 4BF1F3E2A") == "4BF1F3E2A"
    assert parse_queue_id("OK id=1rXyZ-000abc-2Q") == "1rXyZ-000abc-2Q"
    assert parse_queue_id("2.0.0 OK  1700000000 a1b2c3si4.12 - gsmtp") == "a1b2c3si4.12"
    assert parse_queue_id("Ok") == ""


def test_outcome_from_recipient_states():
    assert combine_outcome(["accepted", "accepted"]) == "accepted"
    assert combine_outcome(["accepted", "rejected"]) == "partial"
    assert combine_outcome(["unknown", "deferred"]) == "unknown"
    assert combine_outcome(["rejected", "deferred"]) == "transient_failure"
    assert combine_outcome(["rejected"]) == "permanent_failure"


def test_ehlo_parsing_and_disabled_extensions():
    caps = Capabilities.from_ehlo(
        "smtp.example.com\nPIPELINING\nSIZE 35882577\nAUTH=LOGIN\nAUTH PLAIN LOGIN\n"
        "LIMITS RCPTMAX=1000 MAILMAX=50\nREQUIRETLS",
        disabled=["requiretls"],
    )
    assert caps.size_limit == 35882577
    assert caps.rcpt_max == 1000 and caps.mail_max == 50
    assert caps.auth_mechanisms == ["LOGIN", "PLAIN"]
    assert caps.has("PIPELINING") and not caps.has("REQUIRETLS")
    assert "REQUIRETLS" in caps.advertised and "REQUIRETLS" not in caps.effective
    assert parse_ehlo("host only") == {}


@given(st.integers(1, 40), st.integers(0, 2**32))
def test_backoff_is_bounded_and_grows(attempts, seed):
    policy = RetryPolicy(base_seconds=60, max_seconds=3600, jitter=0.2)
    delay = retry_delay(policy, attempts, rng=random.Random(seed))
    assert 1 <= delay <= 3600 * 1.2
    no_jitter = RetryPolicy(base_seconds=60, max_seconds=3600, jitter=0)
    assert retry_delay(no_jitter, attempts) == min(60 * 2 ** (attempts - 1), 3600)


def test_a_hint_is_a_floor_and_giving_up():
    policy = RetryPolicy(base_seconds=10, jitter=0, max_attempts=3, max_age_seconds=100)
    assert retry_delay(policy, 1, hint_seconds=900) == 900
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert not should_give_up(policy, attempts_so_far=2, created_at=now, now=now)
    assert should_give_up(policy, attempts_so_far=3, created_at=now, now=now)
    assert should_give_up(
        policy, attempts_so_far=1, created_at=now - timedelta(seconds=100), now=now
    )
