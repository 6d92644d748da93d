"""The settings table: every key of ``RELIABLE_MAIL``, of a provider, of its ``RETRY`` and of a
reply rule, with its kind of value, range or choices, default, error ids and secrecy.

This is the one place a key is declared; defaults, the dataclasses' arguments, the
unknown-key hints and the docs' settings reference all follow from it. Ranges are those a
value can be used with: no duration overflows a datetime, no count starves a process.
"""

from __future__ import annotations

import math
import re

from ..providers import PRESETS
from ..smtp.capabilities import KNOWN_EXTENSIONS, SUPPORTED_AUTH_MECHANISMS
from ..smtp.classify import ReplyRule, Verdict
from ..smtp.transport import TLS_MODES
from .kinds import (
    CaFile,
    Choice,
    DottedPath,
    EnhancedCode,
    Flag,
    Fraction,
    Host,
    Integer,
    Keyword,
    ListOf,
    Nested,
    ProviderNames,
    Rate,
    ReplyCode,
    ReplyPattern,
    Routes,
    Seconds,
    Text,
)
from .reading import REQUIRED, Field, Readings, Table
from .rules import rule_has_a_condition
from .values import RetryPolicy

MODES = ("queue", "immediate")
TRANSCRIPT_POLICIES = ("always", "failures", "never")
UNKNOWN_POLICIES = ("retry", "hold")
#: Where a batch's SMTP work runs: "auto" (streaming batches in a helper process of the
#: worker's when the machine has a second core), "always" (every batch), "never".
SMTP_PROCESS_POLICIES = ("auto", "always", "never")
BACKOFFS = ("exponential", "linear", "fixed")
RULE_OUTCOMES = {v.value: v for v in Verdict if v != Verdict.OK}
DEFAULT_PORTS = {"implicit": 465, "starttls": 587, "opportunistic": 25, "none": 25}
AWS_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}", re.ASCII)
#: An EHLO name (RFC 5321 §4.1.1.1: a domain or an address literal): printable ASCII, no
#: spaces. Empty means this machine's own name.
EHLO_NAME = re.compile(r"[!-~]*", re.ASCII)


def retry_policy(readings: Readings) -> RetryPolicy:
    return RetryPolicy(**readings.arguments(RETRY))


def reply_rule(readings: Readings) -> ReplyRule:
    retry_after = readings["RETRY_AFTER"]
    return ReplyRule(
        verdict=RULE_OUTCOMES[str(readings["OUTCOME"])],
        code=str(readings["CODE"] or ""),
        enhanced=str(readings["ENHANCED"] or ""),
        text=str(readings["TEXT"] or ""),
        # Whole seconds, rounded up: half a second must not become "retry at once".
        retry_after_seconds=math.ceil(retry_after) if isinstance(retry_after, float) else None,
        description=str(readings["DESCRIPTION"] or ""),
        pause_provider=readings["PAUSE_PROVIDER"] is True,
    )


RETRY = Table(
    (
        Field("MAX_ATTEMPTS", Integer(1, 1000), 8, error_id="E019"),
        Field("BACKOFF", Choice(BACKOFFS), "exponential", error_id="E004"),
        Field("BASE_SECONDS", Seconds(), 60),
        Field("MAX_SECONDS", Seconds(), 3600),
        Field("MAX_AGE_SECONDS", Seconds(), 86400),
        Field("JITTER", Fraction(), 0.2, error_id="E019"),
    ),
    unknown_id="E019",
    unknown_message="is not a known retry setting.",
)

RULE = Table(
    (
        Field("CODE", ReplyCode(), error_id="E020"),
        Field("ENHANCED", EnhancedCode(), error_id="E020"),
        Field("TEXT", ReplyPattern(), error_id="E020"),
        Field("OUTCOME", Choice(tuple(RULE_OUTCOMES)), REQUIRED, error_id="E020"),
        Field("RETRY_AFTER", Seconds()),
        Field("PAUSE_PROVIDER", Flag(), False, error_id="E020"),
        Field("DESCRIPTION", Text()),
    ),
    unknown_id="E020",
    unknown_message="is not a rule key.",
)

#: Read first: they choose the preset whose values fill in the rest.
PRESET_FIELDS = Table(
    (
        Field("PRESET", Choice(tuple(PRESETS), noun="preset"), error_id="E011"),
        Field("REGION", Text(AWS_REGION, "an AWS region such as 'eu-west-1'"), attr=None),
    )
)

SERVER_FIELDS = Table(
    (
        Field("HOST", Host(), error_id="E012"),
        Field("PORT", Integer(1, 65535)),
        Field("TLS", Choice(TLS_MODES), "starttls", error_id="E004"),
        Field("CA_FILE", CaFile(), error_id="E023"),
        # A client certificate (Django's EMAIL_SSL_CERTFILE / EMAIL_SSL_KEYFILE). Read when a
        # connection is made, as Django does; a file that cannot be read is a warning.
        Field("CLIENT_CERTFILE", Text()),
        Field("CLIENT_KEYFILE", Text()),
        Field("USERNAME", Text()),
        Field("PASSWORD", Text(), secret=True),
        Field("OAUTH2_TOKEN", DottedPath(), error_id="E017", secret=True),
        Field(
            "DISABLE_EXTENSIONS",
            ListOf(Keyword(KNOWN_EXTENSIONS, "a known EHLO extension", "Known"), into=frozenset),
            (),
            error_id="E013",
        ),
        Field(
            "AUTH_MECHANISMS",
            ListOf(
                Keyword(
                    SUPPORTED_AUTH_MECHANISMS,
                    "a supported AUTH mechanism",
                    "Supported",
                    listed=SUPPORTED_AUTH_MECHANISMS,
                )
            ),
            SUPPORTED_AUTH_MECHANISMS,
            error_id="E014",
        ),
        Field("TIMEOUT", Seconds(), 30),
        Field("LOCAL_HOSTNAME", Text(EHLO_NAME, "a host name or an address literal, no spaces")),
        Field("ALLOW_PLAINTEXT_AUTH", Flag(), False),
        # Each connection is a task of its own in a batch: a few, not thousands.
        Field("MAX_CONNECTIONS", Integer(1, 100), 2),
        Field("MAX_MESSAGES_PER_CONNECTION", Integer(1, 1_000_000), 100),
        Field("MAX_RECIPIENTS", Integer(1, 1_000_000)),
        Field("RATE_LIMIT", Rate(), error_id="E018"),
        Field("RETRY", Nested(RETRY, retry_policy), {}),
        Field(
            "REPLY_RULES",
            ListOf(Nested(RULE, reply_rule, rules=(rule_has_a_condition,))),
            (),
            attr="reply_rules",
        ),
        Field("FALLBACK", Text(), error_id="E021"),
    )
)

PROVIDER = PRESET_FIELDS + SERVER_FIELDS

TOP_LEVEL = Table(
    (
        Field("DEFAULT_PROVIDER", Text(), error_id="E005", attr=None),
        Field("PROVIDERS", ProviderNames(), REQUIRED, error_id="E005", attr=None),
        Field("ROUTES", Routes(), {}, error_id="E022", attr=None),
        Field("MODE", Choice(MODES), "queue", error_id="E004"),
        Field("TRANSCRIPTS", Choice(TRANSCRIPT_POLICIES), "always", error_id="E004"),
        Field("TRANSCRIPT_MAX_CHARS", Integer(1, 10_000_000), 64 * 1024),
        # now - 100 years is still a datetime: purging never overflows.
        Field("RETENTION_DAYS", Integer(1, 36_500), 30),
        Field("UNKNOWN_OUTCOME", Choice(UNKNOWN_POLICIES), "retry", error_id="E004"),
        # Short, so a killed worker's mail is back within two minutes (lease + the one-minute
        # dispatcher); a running batch renews its leases.
        Field("LEASE_SECONDS", Integer(1, 86_400), 45),
        Field("SMTP_PROCESS", Choice(SMTP_PROCESS_POLICIES), "auto", error_id="E004"),
        # Due messages this long unclaimed mean no worker runs (reliable_mail.W016).
        Field("STALLED_QUEUE_SECONDS", Integer(60, 30 * 86_400), 600),
    )
)

TOP_LEVEL_DEFAULTS = TOP_LEVEL.defaults()
PROVIDER_DEFAULTS = PROVIDER.defaults()
RETRY_DEFAULTS = RETRY.defaults()
RULE_KEYS = RULE.keys
