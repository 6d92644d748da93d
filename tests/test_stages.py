"""The stage table, against a copy written from RFC 5321 §4.3.2 (and RFC 4954, RFC 3207)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from django_reliable_mail.smtp.classify import Reply, ReplyRule, Verdict
from django_reliable_mail.smtp.stages import EXPECTED, Stage, is_unexpected, judge

from .hostile import HostileServer, send
from .test_misbehaving_servers import one

RFC = {
    "greeting": {220},
    "ehlo": {250},
    "helo": {250},
    "starttls": {220},
    "auth": {235},
    "mail": {250},
    "rcpt": {250, 251},
    "data": {354},
    "end_of_data": {250},
    "rset": {250},
    "quit": {221},
}


def test_every_stage_is_in_the_table():
    assert {stage.value for stage in EXPECTED} == set(RFC) == {stage.value for stage in Stage}
    assert EXPECTED[Stage.AUTH].continuation == {334}


@pytest.mark.parametrize("stage", list(Stage))
def test_only_the_expected_code_is_success_and_the_rest_keeps_its_class(stage):
    for code in range(200, 600):
        verdict = judge(stage, Reply(code, "text")).verdict
        if code in RFC[stage.value]:
            assert verdict == Verdict.OK, code
        elif code >= 500:
            assert verdict == Verdict.PERMANENT, code
        else:  # 4xx, and every 2xx/3xx the stage did not ask for
            assert verdict == Verdict.TRANSIENT, code
        positive_but_wrong = code < 400 and code not in RFC[stage.value]
        assert is_unexpected(stage, code) == positive_but_wrong, code


verdicts = st.sampled_from([Verdict.TRANSIENT, Verdict.PERMANENT, Verdict.PROVIDER])
rules = st.lists(
    st.builds(
        ReplyRule,
        verdict=verdicts,
        code=st.sampled_from(["", "2xx", "3xx", "25x", "354", "252", "5xx"]),
        text=st.sampled_from(["", "ok", "queued"]),
    ),
    max_size=3,
)


@given(st.sampled_from(list(Stage)), st.integers(200, 599), rules)
def test_no_rule_turns_a_failure_into_success_or_a_success_into_failure(stage, code, rules):
    verdict = judge(stage, Reply(code, "ok queued"), rules).verdict
    assert (verdict == Verdict.OK) == (code in RFC[stage.value])


def test_a_rule_decides_a_failure():
    rule = ReplyRule(Verdict.PERMANENT, code="4xx", text="suppression")
    assert judge(Stage.RCPT, Reply(451, "on the suppression list"), [rule]).rule is rule
    assert judge(Stage.RCPT, Reply(252, "on the suppression list"), [rule]).rule is None


def test_a_rule_cannot_say_ok():
    with pytest.raises(ValueError, match="cannot make a reply a success"):
        ReplyRule(Verdict.OK, code="252")
    # Nor one that got its "ok" past the check.
    forged = ReplyRule(Verdict.PERMANENT, code="252")
    object.__setattr__(forged, "verdict", Verdict.OK)
    assert judge(Stage.RCPT, Reply(252, "maybe"), [forged]).verdict == Verdict.TRANSIENT


async def test_251_to_rcpt_accepts():
    script = {("rcpt", 0): send(b"251 2.1.5 User not local; will forward\r\n")}
    async with HostileServer(script=script) as server:
        result = await one(server)
    assert result.recipients["a@example.com"].state == "accepted"
    assert server.log.jobs_delivered() == {"1": ["a@example.com"]}
