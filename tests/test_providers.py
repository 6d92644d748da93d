"""Presets: their shape, and the behaviour each one encodes, against loopback servers that
emulate the provider's quirk."""

import re
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from django_reliable_mail.backends import EmailBackend
from django_reliable_mail.conf import get_config, validate
from django_reliable_mail.models import OutboundMessage, ProviderState
from django_reliable_mail.providers import PRESETS, SOURCES
from django_reliable_mail.smtp.classify import Reply, ReplyRule, Verdict, classify_reply

from .test_backend import message

ALL = sorted(PRESETS)
Status = OutboundMessage.Status


def test_the_thirteen_presets_exist():
    assert ALL == sorted(
        [
            "strato",
            "ionos",
            "gmail",
            "office365",
            "ses",
            "sendgrid",
            "mailgun",
            "postmark",
            "brevo",
            "mailjet",
            "fastmail",
            "zoho",
            "postfix",
        ]
    )


@pytest.mark.parametrize("name", ALL)
def test_preset_shape(name):
    values = PRESETS[name]
    assert values["HOST"] and isinstance(values["PORT"], int)
    assert (values["TLS"], values["PORT"]) in {("implicit", 465), ("starttls", 587)}
    assert values["AUTH_MECHANISMS"]
    assert SOURCES[name], f"{name} cites no source"
    extra = {"PASSWORD": "k"} if "USERNAME" in values else {}
    config, problems = validate({"PROVIDERS": {"p": {"PRESET": name, **extra}}})
    assert problems == [] and config is not None
    for rule in values.get("REPLY_RULES", []):
        assert rule.get("DESCRIPTION"), rule


def test_ses_region_and_overrides_win():
    config, _ = validate(
        {"PROVIDERS": {"p": {"PRESET": "ses", "REGION": "eu-west-1", "MAX_RECIPIENTS": 10}}}
    )
    provider = config.provider("p")
    assert provider.host == "email-smtp.eu-west-1.amazonaws.com"
    assert provider.max_recipients == 10


def rule_cases():
    for name in ALL:
        for index in range(len(PRESETS[name].get("REPLY_RULES", []))):
            yield pytest.param(name, index, id=f"{name}-{index}")


def reply_for(rule):
    enhanced = rule.get("ENHANCED", "")
    code = rule.get("CODE") or ("450" if enhanced.startswith("4") else "550")
    example = rule.get("TEXT", "").split("|")[0]
    text = f"{code} {enhanced} {example} (emulated)".replace("  ", " ")
    assert (
        classify_reply(
            Reply(int(code), text[4:]),
            [
                ReplyRule(
                    verdict=Verdict(rule["OUTCOME"]),
                    code=rule.get("CODE", ""),
                    enhanced=enhanced,
                    text=rule.get("TEXT", ""),
                )
            ],
        ).rule
        is not None
    )
    return text


def loopback_preset(name, server, ca_file):
    values = {
        "PRESET": name,
        "HOST": server.host,
        "PORT": server.port,
        "CA_FILE": ca_file,
        "TIMEOUT": 5,
        "RETRY": {"JITTER": 0},
    }
    if "USERNAME" in PRESETS[name]:
        values["PASSWORD"] = "api-key-secret"
    return {"DEFAULT_PROVIDER": name, "MODE": "immediate", "PROVIDERS": {name: values}}


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "index"), list(rule_cases()))
def test_each_reply_rule_does_what_it_says(
    name, index, smtp_server, tls, django_capture_on_commit_callbacks
):
    rule = PRESETS[name]["REPLY_RULES"][index]
    users = {"apikey": "api-key-secret"} if "USERNAME" in PRESETS[name] else None
    server = smtp_server(tls=PRESETS[name]["TLS"], users=users, data_reply=reply_for(rule))
    before = timezone.now()
    with override_settings(RELIABLE_MAIL=loopback_preset(name, server, tls[1])):
        with django_capture_on_commit_callbacks(execute=True):
            EmailBackend().send_messages([message()])
    row = OutboundMessage.objects.get()
    attempt = row.attempts.get()
    state = ProviderState.objects.filter(name=name).first()
    paused = state is not None and state.degraded_until is not None
    wait = timedelta(seconds=rule.get("RETRY_AFTER", 0) * 0.9)
    if rule["OUTCOME"] == "provider":
        assert row.status == Status.RETRYING and row.attempt_count == 0
        assert attempt.provider_level and paused
        assert state.degraded_until >= before + wait
        assert rule["DESCRIPTION"] in state.degraded_reason
    elif rule["OUTCOME"] == "permanent":
        assert row.status == Status.FAILED
        assert paused == bool(rule.get("PAUSE_PROVIDER"))
    else:
        assert row.status == Status.RETRYING and row.attempt_count == 1 and not paused
        assert row.next_attempt_at >= before + wait


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "limit"), [("gmail", 100), ("ses", 50), ("postmark", 50)])
def test_recipient_limits_split_the_envelope(
    name, limit, smtp_server, tls, django_capture_on_commit_callbacks
):
    server = smtp_server(tls=PRESETS[name]["TLS"])
    recipients = [f"r{i}@example.com" for i in range(limit + 7)]
    with override_settings(RELIABLE_MAIL=loopback_preset(name, server, tls[1])):
        with django_capture_on_commit_callbacks(execute=True):
            EmailBackend().send_messages([message(to=recipients)])
    assert [len(m.rcpt_tos) for m in server.messages] == [limit, 7]
    assert OutboundMessage.objects.get().status == Status.SENT


@pytest.mark.django_db
def test_strato_preset_against_a_strato_like_server(
    smtp_server, tls, django_capture_on_commit_callbacks
):
    server = smtp_server(
        tls="implicit",
        extensions=["REQUIRETLS", "LIMITS RCPTMAX=1000"],
        discard_when_requiretls=True,
    )
    with override_settings(RELIABLE_MAIL=loopback_preset("strato", server, tls[1])):
        ordinary, strict = message(), message(subject="needs REQUIRETLS")
        strict.reliable_mail = {"require_tls": True}
        with django_capture_on_commit_callbacks(execute=True):
            EmailBackend().send_messages([ordinary, strict])
        assert get_config().provider("strato").disable_extensions == {"REQUIRETLS"}
    statuses = dict(OutboundMessage.objects.values_list("subject", "status"))
    assert statuses == {"Reset your password": "sent", "needs REQUIRETLS": "failed"}
    assert len(server.messages) == 1 and server.log.discarded == []


@given(
    st.sampled_from(["4", "5"]),
    st.integers(0, 99),
    st.integers(0, 999),
    st.integers(0, 999),
    st.text(alphabet="abcdefghij klmnop", max_size=30),
)
def test_rule_matching_properties(klass, tail, subject, detail, words):
    code = int(f"{klass}{tail:02d}")
    enhanced = f"{klass}.{subject}.{detail}"
    reply = Reply(code, f"{enhanced} {words}")
    assert reply.enhanced_code == enhanced
    assert ReplyRule(Verdict.PROVIDER, code=f"{klass}xx").matches(reply)
    assert ReplyRule(Verdict.PROVIDER, enhanced=f"{klass}.{subject}.").matches(reply)
    assert ReplyRule(Verdict.PROVIDER, enhanced=enhanced).matches(reply)
    other = "4" if klass == "5" else "5"
    assert not ReplyRule(Verdict.PROVIDER, code=f"{other}xx").matches(reply)
    assert not ReplyRule(Verdict.PROVIDER, code=str(code), text="zzz-absent").matches(reply)
    if words.strip():
        assert ReplyRule(Verdict.PROVIDER, text=re.escape(words.strip())).matches(reply)
