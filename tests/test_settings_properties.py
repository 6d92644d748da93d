"""Generated settings: any value under any key is reported (never raised), names its key path,
never shows a secret, and a valid configuration survives a round trip.

The oracles here are written from the documented ranges (docs/settings.rst), not from the
table in conf/tables.py, so a wrong range in the table fails them.
"""

import math
import os
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from django_reliable_mail.conf import (
    PROVIDER_DEFAULTS,
    RETRY_DEFAULTS,
    RULE_KEYS,
    TOP_LEVEL_DEFAULTS,
    Config,
    validate,
)
from django_reliable_mail.conf.wording import shown

from .settings_strategies import (
    OK,
    anything,
    hashable,
    secret_values,
    valid_settings,
)

TEN_YEARS = 3650 * 86400
#: RELIABLE_MAIL_SETTINGS_EXAMPLES=5000 for a long fuzzing run.
EXAMPLES = int(os.environ.get("RELIABLE_MAIL_SETTINGS_EXAMPLES", "60"))
SETTINGS = settings(
    max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow], deadline=None
)


def base(**top):
    return {"PROVIDERS": {"main": dict(OK)}, **top}


def with_provider_key(key, value):
    return {"PROVIDERS": {"main": {**OK, key: value}}}


def with_retry_key(key, value):
    return {"PROVIDERS": {"main": {**OK, "RETRY": {key: value}}}}


def with_rule_key(key, value):
    rule = {"CODE": "550", "OUTCOME": "transient", key: value}
    return {"PROVIDERS": {"main": {**OK, "REPLY_RULES": [rule]}}}


PROVIDER = "RELIABLE_MAIL['PROVIDERS']['main']"
WHERE = {
    "top": ("RELIABLE_MAIL['{key}']", base),
    "provider": (PROVIDER + "['{key}']", with_provider_key),
    "retry": (PROVIDER + "['RETRY']['{key}']", with_retry_key),
    "rule": (PROVIDER + "['REPLY_RULES'][0]['{key}']", with_rule_key),
}
CASES = [
    *(("top", key) for key in TOP_LEVEL_DEFAULTS),
    *(("provider", key) for key in PROVIDER_DEFAULTS),
    *(("retry", key) for key in RETRY_DEFAULTS),
    *(("rule", key) for key in RULE_KEYS),
]


def checked(raw):
    """validate(), plus the properties every answer has."""
    config, problems = validate(raw)
    for problem in problems:
        assert problem.message.startswith("RELIABLE_MAIL"), problem
        assert problem.id.startswith("reliable_mail.")
        assert len(str(problem)) < 2000, problem
    errors = [p for p in problems if not p.warning]
    assert (config is None) == bool(errors), problems
    return config, problems


@pytest.mark.parametrize(("level", "key"), CASES, ids=[f"{lv}-{k}" for lv, k in CASES])
@SETTINGS
@given(value=anything)
def test_any_value_under_any_key_is_reported_at_its_path(level, key, value):
    template, build = WHERE[level]
    path = template.format(key=key)
    config, problems = checked(build(key, value) if level != "top" else base(**{key: value}))
    if config is None:
        # A rule left with no condition is reported at the rule itself.
        holder = path.rpartition("[")[0] + " needs at least one of"
        named = [p for p in problems if path in p.message or p.message.startswith(holder)]
        assert named, (path, problems)


@SETTINGS
@given(raw=anything)
def test_anything_as_the_whole_setting(raw):
    if raw is None:
        return  # None means "not set": Django's EMAIL_* settings are read instead
    checked(raw)


@SETTINGS
@given(
    values=st.dictionaries(
        st.sampled_from(sorted(PROVIDER_DEFAULTS)) | hashable, anything, max_size=8
    ),
    top=st.dictionaries(st.sampled_from(sorted(TOP_LEVEL_DEFAULTS)) | hashable, anything),
)
def test_any_provider_dict_beside_any_top_level(values, top):
    checked({**top, "PROVIDERS": {"main": values, "other": dict(OK)}})


# -- oracles: what the docs say each simple key accepts ------------------------


def integer_in(low, high):
    return lambda v: type(v) is int and low <= v <= high


def seconds(v):
    if type(v) is float and not math.isfinite(v):
        return False
    return type(v) in (int, float) and 0 < v <= TEN_YEARS


def one_of(*choices):
    return lambda v: isinstance(v, str) and v in choices


ORACLES = {
    ("top", "MODE"): one_of("queue", "immediate"),
    ("top", "TRANSCRIPTS"): one_of("always", "failures", "never"),
    ("top", "UNKNOWN_OUTCOME"): one_of("retry", "hold"),
    ("top", "SMTP_PROCESS"): one_of("auto", "always", "never"),
    ("top", "TRANSCRIPT_MAX_CHARS"): integer_in(1, 10_000_000),
    ("top", "RETENTION_DAYS"): integer_in(1, 36_500),
    ("top", "LEASE_SECONDS"): integer_in(1, 86_400),
    ("top", "DEFAULT_PROVIDER"): lambda v: v is None or v == "main",
    ("provider", "PORT"): lambda v: v is None or (integer_in(1, 65535)(v) and v != 465),
    ("provider", "TLS"): one_of("starttls", "opportunistic", "none"),  # PORT is 587
    ("provider", "TIMEOUT"): seconds,
    ("provider", "MAX_CONNECTIONS"): integer_in(1, 100),
    ("provider", "MAX_MESSAGES_PER_CONNECTION"): integer_in(1, 1_000_000),
    ("provider", "MAX_RECIPIENTS"): lambda v: v is None or integer_in(1, 1_000_000)(v),
    ("provider", "ALLOW_PLAINTEXT_AUTH"): lambda v: type(v) is bool,
    ("provider", "USERNAME"): lambda v: v is None or v == "",  # "u" alone lacks a password
    ("provider", "PASSWORD"): lambda v: v is None or v == "",  # and a password its user
    ("retry", "MAX_ATTEMPTS"): integer_in(1, 1000),
    ("retry", "BACKOFF"): one_of("exponential", "linear", "fixed"),
    ("retry", "BASE_SECONDS"): seconds,
    ("retry", "MAX_SECONDS"): seconds,
    ("retry", "MAX_AGE_SECONDS"): seconds,
    ("retry", "JITTER"): lambda v: type(v) in (int, float) and 0 <= v <= 1,
    ("rule", "OUTCOME"): one_of("transient", "permanent", "provider"),
    ("rule", "PAUSE_PROVIDER"): lambda v: type(v) is bool,
    ("rule", "RETRY_AFTER"): lambda v: v is None or seconds(v),
    ("rule", "DESCRIPTION"): lambda v: v is None or isinstance(v, str),
}
NUMBERS = (
    st.integers()
    | st.sampled_from([0, 1, -1, 2**31, 2**63, 10**12, TEN_YEARS, TEN_YEARS + 1])
    | st.floats()
    | st.sampled_from([0.5, 1.0, -0.0, float("nan"), float("inf"), -float("inf")])
)


@pytest.mark.parametrize(
    ("level", "key"), sorted(ORACLES), ids=[f"{lv}-{k}" for lv, k in sorted(ORACLES)]
)
@SETTINGS
@given(value=anything | NUMBERS | st.sampled_from([True, False, "", "queue", "main", "hold"]))
def test_the_documented_values_and_only_those_are_accepted(level, key, value):
    _, build = WHERE[level]
    config, _ = checked(build(key, value) if level != "top" else base(**{key: value}))
    assert (config is not None) == ORACLES[level, key](value), value


# -- secrets ---------------------------------------------------------------------


WRAPPERS = (
    lambda secret: secret,
    lambda secret: secret.encode(),
    lambda secret: [secret],
    lambda secret: (secret,),
    lambda secret: {"token": secret},
    lambda secret: {secret: 1},
    lambda secret: [[secret]],
)


@SETTINGS
@given(
    secret=secret_values,
    key=st.sampled_from(["PASSWORD", "OAUTH2_TOKEN"]),
    wrap=st.sampled_from(WRAPPERS),
    username=st.none() | st.just("user@example.com") | anything,
    mechanisms=st.sampled_from([None, ["XOAUTH2"], ["PLAIN"], "XOAUTH2"]),
)
def test_no_message_shows_a_secret(secret, key, wrap, username, mechanisms):
    """The secret itself, or mistyped: in bytes, in a list, in a dict, as a key."""
    # The user name is shown, and may be anything: a secret that it spells is not a leak.
    # (Hypothesis draws text from the code's own words: "BrokenRepr" does come up.)
    assume(secret[6:] not in _printed(username) + shown(username))
    value = wrap(secret)
    provider = {**OK, key: value, "USERNAME": username}
    if mechanisms is not None:
        provider["AUTH_MECHANISMS"] = mechanisms
    for raw in (
        {"PROVIDERS": {"main": provider}},
        {"PROVIDERS": {"main": {"PRESET": "gmail", key: value, "USERNAME": username}}},
    ):
        _, problems = checked(raw)
        _assert_hidden(secret, problems)
    _, problems = validate(
        {"PROVIDERS": {"main": dict(OK)}},
        overrides={key: value, "USERNAME": username},
        override_provider="main",
        override_source="MAILERS['default']['OPTIONS']",
    )
    _assert_hidden(secret, problems)


def _printed(value):
    try:
        return repr(value)
    except Exception:  # an integer too long to print, a value whose repr fails
        return ""


def _assert_hidden(secret, problems):
    for problem in problems:
        text = f"{problem.message} {problem.hint}"
        assert secret not in text, problem
        assert secret[6:] not in text, problem  # not even without its marker prefix


# -- round trip ------------------------------------------------------------------


def to_settings(config: Config) -> dict:
    """A Config written back as RELIABLE_MAIL, every key explicit."""
    return {
        "DEFAULT_PROVIDER": config.default_provider,
        "PROVIDERS": {name: _provider_settings(p) for name, p in config.providers.items()},
        "ROUTES": dict(config.routes),
        "MODE": config.mode,
        "TRANSCRIPTS": config.transcripts,
        "TRANSCRIPT_MAX_CHARS": config.transcript_max_chars,
        "RETENTION_DAYS": config.retention_days,
        "UNKNOWN_OUTCOME": config.unknown_outcome,
        "LEASE_SECONDS": config.lease_seconds,
        "SMTP_PROCESS": config.smtp_process,
    }


def _provider_settings(p):
    retry = p.retry
    values = {
        "PRESET": p.preset,
        "HOST": p.host,
        "PORT": p.port,
        "TLS": p.tls,
        "CA_FILE": p.ca_file,
        "USERNAME": p.username,
        "PASSWORD": p.password,
        "OAUTH2_TOKEN": p.oauth2_token,
        "DISABLE_EXTENSIONS": sorted(p.disable_extensions),
        "AUTH_MECHANISMS": list(p.auth_mechanisms),
        "TIMEOUT": p.timeout,
        "LOCAL_HOSTNAME": p.local_hostname,
        "ALLOW_PLAINTEXT_AUTH": p.allow_plaintext_auth,
        "MAX_CONNECTIONS": p.max_connections,
        "MAX_MESSAGES_PER_CONNECTION": p.max_messages_per_connection,
        "MAX_RECIPIENTS": p.max_recipients,
        "RATE_LIMIT": f"{p.rate_limit.count}/{p.rate_limit.per_seconds}s" if p.rate_limit else None,
        "RETRY": {
            "MAX_ATTEMPTS": retry.max_attempts,
            "BACKOFF": retry.backoff,
            "BASE_SECONDS": retry.base_seconds,
            "MAX_SECONDS": retry.max_seconds,
            "MAX_AGE_SECONDS": retry.max_age_seconds,
            "JITTER": retry.jitter,
        },
        "REPLY_RULES": [
            {
                "CODE": rule.code,
                "ENHANCED": rule.enhanced,
                "TEXT": rule.text,
                "OUTCOME": rule.verdict.value,
                "RETRY_AFTER": rule.retry_after_seconds,
                "PAUSE_PROVIDER": rule.pause_provider,
                "DESCRIPTION": rule.description,
            }
            for rule in p.reply_rules
        ],
        "FALLBACK": p.fallback,
    }
    if not p.username:  # mechanisms without credentials are a mistake (E017)
        del values["AUTH_MECHANISMS"]
    return values


@SETTINGS
@given(raw=valid_settings())
def test_a_valid_configuration_round_trips(raw):
    config, problems = checked(raw)
    assert config is not None, problems
    assert [p for p in problems if not p.warning] == []
    again, problems = checked(to_settings(config))
    assert again is not None, problems
    assert replace(again, raw_providers={}) == replace(config, raw_providers={})
    for name, values in raw["PROVIDERS"].items():
        provider = config.provider(name)
        assert provider.host == values["HOST"] and provider.port == values["PORT"]
        assert provider.password == values.get("PASSWORD")
        assert provider.retry.max_attempts == values.get("RETRY", {}).get("MAX_ATTEMPTS", 8)
    assert config.lease_seconds == raw.get("LEASE_SECONDS", 45)
    assert config.retention_days == raw.get("RETENTION_DAYS", 30)
