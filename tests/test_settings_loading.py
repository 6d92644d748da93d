"""Where settings come from besides RELIABLE_MAIL (Django's EMAIL_*, backend options,
MAILERS), the cached configuration, and the frozen values handed to the transport."""

from types import SimpleNamespace

import pytest
from django.test import override_settings

from django_reliable_mail.conf import (
    PROVIDER_DEFAULTS,
    RETRY_DEFAULTS,
    TOP_LEVEL_DEFAULTS,
    Problem,
    RetryPolicy,
    config_for_mailer,
    config_with_options,
    get_config,
    options_to_provider_keys,
    validate,
)
from django_reliable_mail.conf.reading import REQUIRED, Table
from django_reliable_mail.conf.sources import TLS_CONFLICT
from django_reliable_mail.conf.tables import PRESET_FIELDS, PROVIDER, SERVER_FIELDS, TOP_LEVEL
from django_reliable_mail.conf.wording import did_you_mean, shown, type_name
from django_reliable_mail.exceptions import ReliableMailConfigError, UnknownProviderError

from .helpers import oauth_token
from .settings_strategies import OK

MAIN = {"PROVIDERS": {"main": OK}}


# -- Django's EMAIL_* settings ----------------------------------------------------------


@pytest.fixture
def django_email(settings):
    del settings.RELIABLE_MAIL
    settings.EMAIL_HOST, settings.EMAIL_PORT = "mail.example.com", 2525
    settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = "", ""
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    return settings


def the_default(**values):
    config, problems = validate()
    assert config is not None, problems
    assert config.source == "Django's EMAIL_* settings"
    assert config.default_provider == "default" and list(config.providers) == ["default"]
    # The drop-in path sends as Django's backend does: in the calling process.
    assert config.mode == "immediate"
    return config.provider("default")


def test_djangos_email_settings_make_one_provider(django_email):
    provider = the_default()
    assert (provider.host, provider.port, provider.tls) == ("mail.example.com", 2525, "none")
    assert (provider.username, provider.password, provider.timeout) == (None, None, 30.0)


def test_djangos_credentials_tls_and_timeout(django_email):
    django_email.EMAIL_HOST_USER, django_email.EMAIL_HOST_PASSWORD = "app", "pw"
    django_email.EMAIL_USE_TLS, django_email.EMAIL_TIMEOUT = True, 7
    provider = the_default()
    assert (provider.username, provider.password) == ("app", "pw")
    assert (provider.tls, provider.timeout) == ("starttls", 7.0)
    django_email.EMAIL_USE_TLS, django_email.EMAIL_USE_SSL, django_email.EMAIL_PORT = (
        False,
        True,
        465,
    )
    assert the_default().tls == "implicit"


def test_djangos_defaults_when_nothing_is_set(settings):
    del settings.RELIABLE_MAIL
    for name in ("EMAIL_HOST", "EMAIL_PORT", "EMAIL_USE_TLS", "EMAIL_USE_SSL", "EMAIL_TIMEOUT"):
        if hasattr(settings, name):
            delattr(settings, name)
    provider = the_default()
    assert (provider.host, provider.port, provider.tls, provider.timeout) == (
        "localhost",
        25,
        "none",
        30.0,
    )


def test_with_mailers_the_email_settings_are_not_read(django_email):
    django_email.MAILERS = {"default": {"BACKEND": "x", "OPTIONS": {}}}
    provider = the_default()
    assert (provider.host, provider.port, provider.tls) == ("localhost", 25, "none")


def test_djangos_values_are_checked(django_email):
    django_email.EMAIL_TIMEOUT = float("nan")
    config, problems = validate()
    assert config is None
    assert [str(p) for p in problems] == ["EMAIL_TIMEOUT must be a finite number, not nan."]


def test_both_tls_flags_are_an_error_naming_both_settings(django_email):
    django_email.EMAIL_USE_TLS = django_email.EMAIL_USE_SSL = True
    config, problems = validate()
    assert config is None
    (problem,) = problems
    assert problem.id == "reliable_mail.E024" and not problem.warning
    assert problem.message.startswith("EMAIL_USE_TLS and EMAIL_USE_SSL are both True")
    # Django's own sentence, which code written against Django's backend may match.
    assert TLS_CONFLICT in problem.message


@pytest.mark.parametrize(
    ("user", "password", "named"),
    [("app", "", "EMAIL_HOST_USER"), ("", "pw-Secret", "EMAIL_HOST_PASSWORD")],
)
def test_one_credential_alone_means_no_auth_with_a_warning(django_email, user, password, named):
    django_email.EMAIL_HOST_USER, django_email.EMAIL_HOST_PASSWORD = user, password
    config, problems = validate()
    assert config is not None
    assert (config.provider("default").username, config.provider("default").password) == (
        None,
        None,
    )
    (warning,) = problems
    assert warning.warning and warning.id == "reliable_mail.W002"
    assert warning.message.startswith(f"{named} is set but ")
    assert "no AUTH is attempted" in warning.message and "pw-Secret" not in str(warning)


def test_client_certificate_settings(django_email, tmp_path):
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    django_email.EMAIL_SSL_CERTFILE, django_email.EMAIL_SSL_KEYFILE = str(cert), str(key)
    provider = the_default()
    assert (provider.client_certfile, provider.client_keyfile) == (str(cert), str(key))


def test_credentials_without_tls_warn_naming_the_django_setting(django_email):
    django_email.EMAIL_HOST_USER, django_email.EMAIL_HOST_PASSWORD = "app", "pw-Secret"
    (warning,) = validate()[1]
    assert warning.id == "reliable_mail.W001"
    assert warning.message.startswith("EMAIL_USE_TLS is 'none'")
    assert "EMAIL_USE_TLS" in warning.hint and "pw-Secret" not in str(warning)


# -- backend options and MAILERS -----------------------------------------------------


def keys_of(options, **base):
    return options_to_provider_keys(options, base=SimpleNamespace(**base) if base else None).keys


def test_options_to_provider_keys():
    assert keys_of({"host": "h", "port": 1, "disable_extensions": []}) == {
        "HOST": "h",
        "PORT": 1,
        "DISABLE_EXTENSIONS": [],
    }
    assert keys_of({"ssl_certfile": "c.pem", "ssl_keyfile": "k.pem"}) == {
        "CLIENT_CERTFILE": "c.pem",
        "CLIENT_KEYFILE": "k.pem",
    }


@pytest.mark.parametrize(
    ("base", "options", "tls"),
    [
        ("none", {"use_tls": True}, "starttls"),
        ("none", {"use_ssl": True}, "implicit"),
        # An argument set to False overrides the setting, as in Django's backend.
        ("starttls", {"use_tls": False}, "none"),
        ("implicit", {"use_ssl": False}, "none"),
        ("implicit", {"use_tls": False}, "implicit"),
        ("starttls", {"use_ssl": True, "use_tls": False}, "implicit"),
        ("opportunistic", {"use_ssl": False}, "opportunistic"),
        ("opportunistic", {"use_tls": False}, "none"),
        ("none", {"use_tls": False, "use_ssl": False}, "none"),
    ],
)
def test_djangos_tls_flags_override_one_at_a_time(base, options, tls):
    assert keys_of(options, tls=base) == {"TLS": tls}


@pytest.mark.parametrize(
    ("base", "options"),
    [
        ("none", {"use_tls": True, "use_ssl": True}),
        ("implicit", {"use_tls": True}),
        ("starttls", {"use_ssl": True}),
    ],
)
def test_both_tls_flags_on_is_a_value_error(base, options):
    from django_reliable_mail.conf.report import Report

    report = Report()
    options_to_provider_keys(options, base=SimpleNamespace(tls=base), report=report)
    (problem,) = report.problems
    assert problem.id == "reliable_mail.E024" and TLS_CONFLICT in problem.message


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # "" for either means no AUTH (Django: username and password must both be set).
        ({"username": "", "password": ""}, (None, None)),
        ({"username": ""}, (None, None)),
        ({"password": ""}, (None, None)),
        ({"username": "other", "password": "pw2"}, ("other", "pw2")),
        ({"username": "other"}, ("other", None)),
    ],
)
def test_credentials_replace_the_providers_as_a_pair(options, expected):
    keys = keys_of(options, tls="starttls", username="app", password="pw", oauth2_token=None)
    assert (keys["USERNAME"], keys.get("PASSWORD")) == expected


@override_settings(
    RELIABLE_MAIL={"PROVIDERS": {"main": OK, "other": OK}, "DEFAULT_PROVIDER": "main"}
)
def test_config_with_options():
    base = get_config()
    assert config_with_options(None, {}, alias=None) == (base, "main")
    assert config_with_options("other", {}, alias=None)[1] == "other"
    config, name = config_with_options("other", {"port": 2525}, alias=None)
    assert name == "other" and config.provider("other").port == 2525
    assert config.provider("main").port == 587
    with pytest.raises(ReliableMailConfigError) as excinfo:
        config_with_options(None, {"port": "x"}, alias=None)
    assert "EmailBackend options['port'] must be an integer, not 'x'." in str(excinfo.value)
    with pytest.raises(ReliableMailConfigError) as excinfo:
        config_with_options(None, {"port": "x"}, alias="bulk")
    assert "MAILERS['bulk']['OPTIONS']['port'] must be an integer" in str(excinfo.value)
    with pytest.raises(UnknownProviderError):
        config_with_options("nope", {}, alias=None)


def test_config_for_mailer(settings):
    # Through the settings fixture only: an override_settings decorator beside it would be
    # captured by the fixture's own restore, and leak into the tests after this one.
    settings.RELIABLE_MAIL = {"PROVIDERS": {"main": OK, "bulk": OK}, "DEFAULT_PROVIDER": "main"}
    gone = (
        "MAILERS['gone'] is gone, but queued messages were sent through it; restore it or move "
        "those messages to another provider."
    )
    if hasattr(settings, "MAILERS"):
        del settings.MAILERS
    with pytest.raises(ReliableMailConfigError) as excinfo:
        config_for_mailer("gone")
    assert str(excinfo.value) == gone
    backend = "django_reliable_mail.backends.EmailBackend"
    settings.MAILERS = {
        "bulk": {
            "BACKEND": backend,
            "OPTIONS": {"provider": "bulk", "port": 2525, "fail_silently": True, "timeout": None},
        },
        "broken": {"BACKEND": backend, "OPTIONS": {"port": "x"}},
        "plain": {"BACKEND": backend},
    }
    config, name = config_for_mailer("bulk")
    assert name == "bulk" and config.provider("bulk").port == 2525
    assert config.provider("bulk").timeout == 30.0 and config.provider("main").port == 587
    assert config_for_mailer("plain") == (get_config(), "main")
    with pytest.raises(ReliableMailConfigError) as excinfo:
        config_for_mailer("broken")
    assert "MAILERS['broken']['OPTIONS']['port'] must be an integer" in str(excinfo.value)
    with pytest.raises(ReliableMailConfigError) as excinfo:
        config_for_mailer("gone")
    assert str(excinfo.value) == gone


def test_the_configuration_is_cached_until_a_setting_changes():
    with override_settings(RELIABLE_MAIL={**MAIN, "LEASE_SECONDS": 10}):
        first = get_config()
        assert get_config() is first and first.lease_seconds == 10
        with override_settings(RELIABLE_MAIL={**MAIN, "LEASE_SECONDS": 20}):
            assert get_config().lease_seconds == 20
        assert get_config().lease_seconds == 10


def test_one_error_lists_every_problem():
    with override_settings(RELIABLE_MAIL={**MAIN, "MODE": "x", "LEASE_SECONDS": 0}):
        with pytest.raises(ReliableMailConfigError) as excinfo:
            get_config()
    assert str(excinfo.value) == (
        "django-reliable-mail is misconfigured:\n"
        "  reliable_mail.E004: RELIABLE_MAIL['MODE'] is 'x'; expected one of 'queue', "
        "'immediate'.\n"
        "  reliable_mail.E003: RELIABLE_MAIL['LEASE_SECONDS'] must be between 1 and 86400, "
        "not 0."
    )
    assert [p.id for p in excinfo.value.problems] == ["reliable_mail.E004", "reliable_mail.E003"]


def test_warnings_do_not_raise():
    raw = {
        "PROVIDERS": {"main": {**OK, "TLS": "none", "PORT": 25, "USERNAME": "u", "PASSWORD": "p"}}
    }
    with override_settings(RELIABLE_MAIL=raw):
        assert get_config().provider("main").username == "u"


# -- the frozen values ----------------------------------------------------------------


def test_defaults():
    config, _ = validate(MAIN)
    main = config.provider("main")
    assert (config.mode, config.transcripts, config.unknown_outcome) == ("queue", "always", "retry")
    assert (config.lease_seconds, config.retention_days) == (45, 30)
    assert (config.transcript_max_chars, config.smtp_process) == (65536, "auto")
    assert config.routes == {} and config.source == "RELIABLE_MAIL"
    assert main.retry == RetryPolicy(8, "exponential", 60.0, 3600.0, 86400.0, 0.2)
    assert main.auth_mechanisms == ("XOAUTH2", "CRAM-MD5", "PLAIN", "LOGIN")
    assert (main.max_connections, main.max_messages_per_connection) == (2, 100)
    assert (main.max_recipients, main.rate_limit, main.reply_rules) == (None, None, ())
    assert (main.preset, main.ca_file, main.local_hostname, main.fallback) == (None,) * 4
    assert main.name == "main"
    assert main.disable_extensions == frozenset() and main.allow_plaintext_auth is False
    assert TOP_LEVEL_DEFAULTS["LEASE_SECONDS"] == 45 and TOP_LEVEL_DEFAULTS["PROVIDERS"] is None
    assert PROVIDER_DEFAULTS["TLS"] == "starttls" and PROVIDER_DEFAULTS["HOST"] is None
    assert RETRY_DEFAULTS == {
        "MAX_ATTEMPTS": 8,
        "BACKOFF": "exponential",
        "BASE_SECONDS": 60,
        "MAX_SECONDS": 3600,
        "MAX_AGE_SECONDS": 86400,
        "JITTER": 0.2,
    }
    assert TOP_LEVEL.defaults()["PROVIDERS"] is None
    assert TOP_LEVEL.defaults()["MODE"] == "queue"
    assert any(f.default is REQUIRED for f in TOP_LEVEL.fields)
    joined = PRESET_FIELDS + SERVER_FIELDS
    assert isinstance(joined, Table) and joined.keys == PROVIDER.keys
    assert joined.keys[:3] == ("PRESET", "REGION", "HOST") and joined.unknown_id == "E002"


def test_server_settings_carry_every_provider_value(tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("")
    config, problems = validate(
        {
            "PROVIDERS": {
                "main": {
                    **OK,
                    "TLS": "implicit",
                    "PORT": 465,
                    "ALLOW_PLAINTEXT_AUTH": True,
                    "CA_FILE": str(ca_file),
                    "USERNAME": "u",
                    "OAUTH2_TOKEN": "tests.helpers.oauth_token",
                    "PASSWORD": "pw",
                    "AUTH_MECHANISMS": ["xoauth2", "plain"],
                    "DISABLE_EXTENSIONS": ["chunking"],
                    "TIMEOUT": 9,
                    "LOCAL_HOSTNAME": "client.example.com",
                    "MAX_RECIPIENTS": 10,
                    "REPLY_RULES": [{"CODE": 550, "OUTCOME": "permanent"}],
                }
            }
        }
    )
    assert problems == []
    server = config.provider("main").server_settings(transcript_max_chars=99, record=False)
    assert (server.host, server.port, server.tls) == ("smtp.example.com", 465, "implicit")
    assert (server.ca_file, server.username, server.password) == (str(ca_file), "u", "pw")
    assert server.oauth2_token is oauth_token
    assert server.auth_mechanisms == ("XOAUTH2", "PLAIN")
    assert server.disable_extensions == frozenset({"CHUNKING"})
    assert (server.timeout, server.local_hostname, server.max_recipients) == (
        9.0,
        "client.example.com",
        10,
    )
    assert server.allow_plaintext_auth is True and server.reply_rules[0].code == "550"
    assert (server.transcript_max_chars, server.record_transcript) == (99, False)
    plain = validate(MAIN)[0].provider("main").server_settings(transcript_max_chars=1, record=True)
    assert plain.oauth2_token is None and plain.record_transcript is True
    assert "pw" not in repr(config.provider("main"))


def test_unknown_providers_and_routes():
    config, _ = validate({"PROVIDERS": {"main": OK, "backup": OK}, "DEFAULT_PROVIDER": "main"})
    with pytest.raises(UnknownProviderError) as excinfo:
        config.provider("bakcup")
    assert str(excinfo.value) == (
        "Unknown provider 'bakcup'; RELIABLE_MAIL['PROVIDERS'] defines backup, main. "
        "Did you mean 'backup'?"
    )
    with pytest.raises(UnknownProviderError) as excinfo:
        config.provider("zzz")
    assert str(excinfo.value).endswith("defines backup, main.")
    routed, _ = validate(
        {
            "PROVIDERS": {"main": OK, "billing": OK},
            "DEFAULT_PROVIDER": "main",
            "ROUTES": {"billing.example.com": "billing"},
        }
    )
    assert routed.route("odd@name@billing.example.com") == "billing"
    assert routed.route("billing.example.com@example.com") == "main"
    assert routed.routes == {"billing.example.com": "billing"}


def test_problem_text():
    assert str(Problem("reliable_mail.E003", "Bad.", "Fix it.")) == "Bad. (Fix it.)"
    assert str(Problem("reliable_mail.E003", "Bad.")) == "Bad."


def test_wording():
    assert shown(10**40) == "an integer of 133 bits"
    assert shown(10**40 - 1) == "9" * 40
    assert shown(-(10**40)) == "an integer of 133 bits"
    assert shown([10**5000]) == "a list"  # reprlib prints the integer itself, and fails
    assert shown(True) == "True" and shown("x") == "'x'"
    assert type_name(None) == "NoneType" and type_name(b"") == "bytes"
    assert did_you_mean("plian", ["LOGIN", "PLAIN"]) == "Did you mean 'PLAIN'?"
    assert did_you_mean("starttls", ["STARTTLS", 5]) == "Did you mean 'STARTTLS'?"
    assert did_you_mean(5, ["5"]) == "" and did_you_mean("zzzz", ["PLAIN"]) == ""
    long = "a" * 100
    assert did_you_mean(long[:-1] + "b", [long]) == f"Did you mean {long!r}?"
    assert did_you_mean(long + "b", [long + "a"]) == ""


@pytest.mark.parametrize(
    ("tls", "port"), [("implicit", 465), ("starttls", 587), ("opportunistic", 25), ("none", 25)]
)
def test_the_port_follows_tls(tls, port):
    config, _ = validate({"PROVIDERS": {"main": {"HOST": "smtp.example.com", "TLS": tls}}})
    assert config.provider("main").port == port
    assert config.raw_providers["main"]["PORT"] is None


def test_a_preset_fills_in_and_region_names_the_host():
    config, _ = validate({"PROVIDERS": {"ses": {"PRESET": "ses", "REGION": "eu-west-1"}}})
    ses = config.provider("ses")
    assert ses.host == "email-smtp.eu-west-1.amazonaws.com" and ses.preset == "ses"
    assert (ses.port, ses.tls, ses.max_recipients) == (587, "starttls", 50)
    config, _ = validate({"PROVIDERS": {"ses": {"PRESET": "ses"}}})
    assert config.provider("ses").host == "email-smtp.us-east-1.amazonaws.com"
    config, problems = validate({"PROVIDERS": {"ses": {"PRESET": "ses", "REGION": "EU"}}})
    assert config is None and len(problems) == 1 and "['REGION']" in problems[0].message


def test_backend_options_without_a_source_name():
    _, problems = validate(
        {"PROVIDERS": {"main": OK}}, overrides={"PORT": "x"}, override_provider="main"
    )
    assert [str(p) for p in problems] == ["OPTIONS['port'] must be an integer, not 'x'."]
