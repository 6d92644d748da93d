"""Every class of bad setting → a system check naming the exact key, and the same at build."""

import pytest
from django.core.checks import Error, Warning
from django.test import override_settings

from django_reliable_mail.checks import check_settings
from django_reliable_mail.conf import get_config
from django_reliable_mail.providers import PRESETS

OK = {"HOST": "smtp.example.com", "PORT": 587, "TLS": "starttls"}


def problems(value):
    with override_settings(RELIABLE_MAIL=value):
        return [(m.id, m.msg, m.hint) for m in check_settings()]


@pytest.mark.parametrize(
    ("setting", "expected_id", "message", "hint"),
    [
        ([], "reliable_mail.E001", "RELIABLE_MAIL must be a dict, not list.", None),
        (
            {"PROVIDERS": {"a": OK}, "MDOE": "queue"},
            "reliable_mail.E002",
            "RELIABLE_MAIL['MDOE'] is not a known setting.",
            "Did you mean 'MODE'?",
        ),
        (
            {"PROVIDERS": {"a": {**OK, "PASWORD": "x"}}},
            "reliable_mail.E002",
            "RELIABLE_MAIL['PROVIDERS']['a']['PASWORD'] is not a known setting.",
            "Did you mean 'PASSWORD'?",
        ),
        (
            {"PROVIDERS": {"a": {**OK, "PORT": "587"}}},
            "reliable_mail.E003",
            "RELIABLE_MAIL['PROVIDERS']['a']['PORT'] must be an integer, not '587'.",
            None,
        ),
        (
            {"PROVIDERS": {"a": {**OK, "TIMEOUT": True}}},
            "reliable_mail.E003",
            "RELIABLE_MAIL['PROVIDERS']['a']['TIMEOUT'] must be an integer or a number, not True.",
            None,
        ),
        (
            {"PROVIDERS": {"a": OK}, "MODE": "later"},
            "reliable_mail.E004",
            "RELIABLE_MAIL['MODE'] is 'later'; expected one of 'queue', 'immediate'.",
            None,
        ),
        (
            {"PROVIDERS": {"a": OK}, "SMTP_PROCESS": "yes"},
            "reliable_mail.E004",
            "RELIABLE_MAIL['SMTP_PROCESS'] is 'yes'; expected one of 'auto', 'always', 'never'.",
            None,
        ),
        (
            {"PROVIDERS": {"a": {**OK, "TLS": "ssl"}}},
            "reliable_mail.E004",
            "RELIABLE_MAIL['PROVIDERS']['a']['TLS'] is 'ssl'; expected one of 'implicit', "
            "'starttls', 'opportunistic', 'none'.",
            None,
        ),
        (
            {"PROVIDERS": {}},
            "reliable_mail.E005",
            "RELIABLE_MAIL['PROVIDERS'] must define at least one provider.",
            None,
        ),
        (
            {"PROVIDERS": {"a": OK, "b": OK}},
            "reliable_mail.E005",
            "RELIABLE_MAIL['DEFAULT_PROVIDER'] is required when several providers are defined.",
            "Choose one of 'a', 'b'.",
        ),
        (
            {"PROVIDERS": {"main": OK}, "DEFAULT_PROVIDER": "mian"},
            "reliable_mail.E005",
            "RELIABLE_MAIL['DEFAULT_PROVIDER'] is 'mian', which is not in "
            "RELIABLE_MAIL['PROVIDERS'].",
            "Did you mean 'main'?",
        ),
        (
            {"PROVIDERS": {"a": {"PRESET": "strado"}}},
            "reliable_mail.E011",
            "RELIABLE_MAIL['PROVIDERS']['a']['PRESET'] is 'strado', not a known preset.",
            None,
        ),
        (
            {"PROVIDERS": {"a": {"PORT": 587}}},
            "reliable_mail.E012",
            "RELIABLE_MAIL['PROVIDERS']['a']['HOST'] is required (or a PRESET that sets it).",
            None,
        ),
        (
            {"PROVIDERS": {"a": {**OK, "DISABLE_EXTENSIONS": ["REQUIRETSL"]}}},
            "reliable_mail.E013",
            "RELIABLE_MAIL['PROVIDERS']['a']['DISABLE_EXTENSIONS'][0] is 'REQUIRETSL', not a known "
            "EHLO extension.",
            "Did you mean 'REQUIRETLS'?",
        ),
        (
            {
                "PROVIDERS": {
                    "a": {**OK, "USERNAME": "u", "PASSWORD": "p", "AUTH_MECHANISMS": ["PLAN"]}
                }
            },
            "reliable_mail.E014",
            "RELIABLE_MAIL['PROVIDERS']['a']['AUTH_MECHANISMS'][0] is 'PLAN', not a supported AUTH "
            "mechanism.",
            "Did you mean 'PLAIN'?",
        ),
        (
            {"PROVIDERS": {"a": {**OK, "TLS": "implicit"}}},
            "reliable_mail.E015",
            "RELIABLE_MAIL['PROVIDERS']['a']['TLS'] is 'implicit' but "
            "RELIABLE_MAIL['PROVIDERS']['a']['PORT'] is 587, a plain-text port that upgrades with "
            "STARTTLS.",
            "Use TLS 'starttls' on port 587, or port 465 for implicit TLS.",
        ),
        (
            {"PROVIDERS": {"a": {**OK, "PORT": 465}}},
            "reliable_mail.E015",
            "RELIABLE_MAIL['PROVIDERS']['a']['TLS'] is 'starttls' but "
            "RELIABLE_MAIL['PROVIDERS']['a']['PORT'] is 465, which expects TLS from the first "
            "byte.",
            "Use TLS 'implicit' on port 465, or port 587 for STARTTLS.",
        ),
        (
            {"PROVIDERS": {"a": {"PRESET": "office365", "TLS": "none"}}},
            "reliable_mail.E016",
            "RELIABLE_MAIL['PROVIDERS']['a']['TLS'] is 'none' but preset 'office365' requires TLS "
            "('starttls').",
            None,
        ),
        (
            {"PROVIDERS": {"a": {**OK, "DISABLE_EXTENSIONS": ["STARTTLS"]}}},
            "reliable_mail.E016",
            "RELIABLE_MAIL['PROVIDERS']['a']['DISABLE_EXTENSIONS'] disables STARTTLS but "
            "RELIABLE_MAIL['PROVIDERS']['a']['TLS'] is 'starttls', which requires it.",
            None,
        ),
        (
            {"PROVIDERS": {"a": {**OK, "USERNAME": "u"}}},
            "reliable_mail.E017",
            "RELIABLE_MAIL['PROVIDERS']['a']['USERNAME'] is set but neither "
            "RELIABLE_MAIL['PROVIDERS']['a']['PASSWORD'] nor "
            "RELIABLE_MAIL['PROVIDERS']['a']['OAUTH2_TOKEN'] is.",
            None,
        ),
        (
            {"PROVIDERS": {"a": {**OK, "AUTH_MECHANISMS": ["PLAIN"]}}},
            "reliable_mail.E017",
            "RELIABLE_MAIL['PROVIDERS']['a']['AUTH_MECHANISMS'] is set but no credentials are: "
            "RELIABLE_MAIL['PROVIDERS']['a']['USERNAME'] is missing.",
            None,
        ),
        (
            {"PROVIDERS": {"a": {**OK, "RATE_LIMIT": "60 per minute"}}},
            "reliable_mail.E018",
            "RELIABLE_MAIL['PROVIDERS']['a']['RATE_LIMIT'] is '60 per minute'; expected "
            "'COUNT/UNIT' such as '60/m', '10/s', '2000/d' or '100/5m'.",
            None,
        ),
        (
            {"PROVIDERS": {"a": {**OK, "RETRY": {"MAX_ATEMPTS": 3}}}},
            "reliable_mail.E019",
            "RELIABLE_MAIL['PROVIDERS']['a']['RETRY']['MAX_ATEMPTS'] is not a known retry setting.",
            None,
        ),
        (
            {"PROVIDERS": {"a": {**OK, "REPLY_RULES": [{"CODE": "550", "OUTCOME": "retry"}]}}},
            "reliable_mail.E020",
            "RELIABLE_MAIL['PROVIDERS']['a']['REPLY_RULES'][0]['OUTCOME'] is 'retry'; expected one "
            "of 'transient', 'permanent', 'provider'.",
            None,
        ),
        (
            {"PROVIDERS": {"a": {**OK, "REPLY_RULES": [{"TEXT": "(", "OUTCOME": "transient"}]}}},
            "reliable_mail.E020",
            None,
            None,
        ),
        (
            {"PROVIDERS": {"a": {**OK, "FALLBACK": "b"}}},
            "reliable_mail.E021",
            "RELIABLE_MAIL['PROVIDERS']['a']['FALLBACK'] is 'b', which is not a configured "
            "provider.",
            None,
        ),
        (
            {"PROVIDERS": {"a": OK}, "ROUTES": {"example.com": "z"}},
            "reliable_mail.E022",
            "RELIABLE_MAIL['ROUTES']['example.com'] is 'z', which is not a configured provider.",
            None,
        ),
        (
            {"PROVIDERS": {"a": {**OK, "CA_FILE": "/nonexistent/ca.pem"}}},
            "reliable_mail.E023",
            "RELIABLE_MAIL['PROVIDERS']['a']['CA_FILE'] '/nonexistent/ca.pem' is not a readable "
            "file.",
            None,
        ),
    ],
)
def test_each_bad_setting_is_reported_exactly(setting, expected_id, message, hint):
    found = problems(setting)
    matching = [p for p in found if p[0] == expected_id]
    assert matching, found
    if message is not None:
        assert message in [p[1] for p in matching], matching
    if hint is not None:
        assert hint in [p[2] for p in matching if p[1] == message], matching
    with override_settings(RELIABLE_MAIL=setting), pytest.raises(Exception) as excinfo:
        get_config()
    assert expected_id in str(excinfo.value)


def test_plaintext_credentials_are_a_warning():
    found = problems(
        {"PROVIDERS": {"a": {**OK, "TLS": "none", "PORT": 25, "USERNAME": "u", "PASSWORD": "p"}}}
    )
    assert [p[0] for p in found] == ["reliable_mail.W001"]


def test_valid_settings_and_presets_have_no_problems():
    assert problems({"PROVIDERS": {"a": OK}}) == []
    for name in sorted(PRESETS):
        extra = {"PASSWORD": "api-key"} if name == "sendgrid" else {}  # preset sets USERNAME
        assert problems({"PROVIDERS": {"p": {"PRESET": name, **extra}}}) == [], name
    with override_settings(
        RELIABLE_MAIL={
            "PROVIDERS": {"s": {"PRESET": "strato", "USERNAME": "u", "PASSWORD": "hunter2-xyz"}}
        }
    ):
        strato = get_config().provider("s")
    assert strato.disable_extensions == {"REQUIRETLS"}
    assert (strato.host, strato.port, strato.tls) == ("smtp.strato.de", 465, "implicit")
    assert "hunter2-xyz" not in repr(strato)


def test_settings_beside_a_preset_win():
    with override_settings(
        RELIABLE_MAIL={
            "PROVIDERS": {
                "s": {"PRESET": "strato", "HOST": "smtp.strato.com", "DISABLE_EXTENSIONS": []}
            }
        }
    ):
        strato = get_config().provider("s")
    assert strato.host == "smtp.strato.com" and strato.disable_extensions == frozenset()


def test_check_classes():
    found = check_settings()
    assert all(isinstance(m, Error | Warning) for m in found)
