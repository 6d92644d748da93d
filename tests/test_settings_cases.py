"""Settings: each value that once crashed the check or slipped through, the boundaries of every
range, and where an accepted extreme is used (no datetime overflows at send time)."""

import random
from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings

from django_reliable_mail.checks import check_settings
from django_reliable_mail.conf import LONGEST_SECONDS, get_config, validate
from django_reliable_mail.conf.wording import shown
from django_reliable_mail.exceptions import ReliableMailConfigError, UnknownProviderError
from django_reliable_mail.retry import retry_delay, should_give_up

from .settings_strategies import OK, BrokenRepr

P = "RELIABLE_MAIL['PROVIDERS']['main']"
RULE = P + "['REPLY_RULES'][0]"


def found(raw, **kwargs):
    config, problems = validate(raw, **kwargs)
    assert (config is None) == any(not p.warning for p in problems), problems
    return [(p.id.removeprefix("reliable_mail."), p.message, p.hint) for p in problems]


def provider(**values):
    return {"PROVIDERS": {"main": {**OK, **values}}}


def rule(**values):
    return provider(REPLY_RULES=[values])


def only(raw, **kwargs):
    """The one problem ``raw`` has."""
    problems = found(raw, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


def accepted(raw):
    config, problems = validate(raw)
    assert config is not None and problems == [], problems
    return config


# -- values that crashed `manage.py check` or were let through ----------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            provider(PRESET=["strato"]),
            ("E011", f"{P}['PRESET'] is ['strato'], not a known preset."),
        ),
        (
            provider(PRESET={"name": "strato"}),
            ("E011", f"{P}['PRESET'] is {{'name': 'strato'}}, not a known preset."),
        ),
        (
            rule(ENHANCED=545, OUTCOME="transient"),
            (
                "E020",
                f"{RULE}['ENHANCED'] is 545; expected an enhanced status code like '5.4.5' or "
                "a prefix like '5.7.'.",
            ),
        ),
        (
            rule(TEXT=["quota"], OUTCOME="transient"),
            ("E003", f"{RULE}['TEXT'] must be a string, not ['quota']."),
        ),
        (
            rule(CODE="550", OUTCOME=["transient"]),
            (
                "E020",
                f"{RULE}['OUTCOME'] is ['transient']; expected one of 'transient', "
                "'permanent', 'provider'.",
            ),
        ),
        (
            provider(RATE_LIMIT="1/0m"),
            ("E018", f"{P}['RATE_LIMIT'] is '1/0m'; the period cannot be zero."),
        ),
        (
            {"PROVIDERS": {"main": OK}, "LEASE_SECONDS": 0.5},
            ("E003", "RELIABLE_MAIL['LEASE_SECONDS'] must be an integer, not 0.5."),
        ),
        (
            {"PROVIDERS": {"main": OK}, "LEASE_SECONDS": 10**12},
            (
                "E003",
                "RELIABLE_MAIL['LEASE_SECONDS'] must be between 1 and 86400, not 1000000000000.",
            ),
        ),
        (
            provider(TIMEOUT=float("nan")),
            ("E003", f"{P}['TIMEOUT'] must be a finite number, not nan."),
        ),
        (
            provider(TIMEOUT=float("-inf")),
            ("E003", f"{P}['TIMEOUT'] must be a finite number, not -inf."),
        ),
        (
            provider(HOST=""),
            ("E012", f"{P}['HOST'] is '', which is empty."),
        ),
        (
            provider(HOST="smtp.example.com:2525"),
            ("E012", f"{P}['HOST'] is 'smtp.example.com:2525', which includes a port."),
        ),
        (
            rule(CODE="", OUTCOME="transient"),
            ("E020", f"{RULE} needs at least one of CODE, ENHANCED or TEXT."),
        ),
        (
            rule(CODE="", ENHANCED="", TEXT="", OUTCOME="permanent"),
            ("E020", f"{RULE} needs at least one of CODE, ENHANCED or TEXT."),
        ),
        (
            rule(OUTCOME="permanent"),
            ("E020", f"{RULE} needs at least one of CODE, ENHANCED or TEXT."),
        ),
    ],
)
def test_once_crashing_or_accepted_values_are_reported(raw, expected):
    assert only(raw)[:2] == expected
    with override_settings(RELIABLE_MAIL=raw):
        assert [m.id for m in check_settings()] == ["reliable_mail." + expected[0]]
        with pytest.raises(ReliableMailConfigError, match=expected[0]):
            get_config()


def test_the_hints_say_what_to_do():
    assert only(provider(HOST="smtp.example.com:2525"))[2] == (
        "Put the port in PORT: HOST 'smtp.example.com', PORT 2525."
    )
    assert only(provider(HOST="[::1]:25"))[2] == "Put the port in PORT: HOST '::1', PORT 25."
    assert only(provider(HOST="smtp.example.com:"))[2] == (
        "Put the port in PORT: HOST 'smtp.example.com', PORT 587."
    )
    assert only(provider(HOST=""))[2] == "Set the SMTP server's name, e.g. 'smtp.example.com'."
    assert only(rule(CODE="", TEXT="", OUTCOME="transient"))[2] == (
        "Empty values count as absent: CODE, TEXT."
    )
    assert only(rule(OUTCOME="transient"))[2] == ""
    assert only(provider(PRESET="strado"))[2].startswith("Did you mean 'strato'? Presets: brevo")
    assert only(provider(PRESET=["strato"]))[2].startswith("Presets: brevo, fastmail")


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("smtp.example.com", None),
        ("smtp.example.com.", None),
        ("localhost", None),
        ("127.0.0.1", None),
        ("::1", None),
        ("2001:db8::25", None),
        ("smtp.bücher.de", None),
        ("a" * 253, None),
        ("a" * 254, "longer than a host name can be (253 characters)."),
        ("a" * 200 + "." + "b" * 52, None),
        ("   ", "which is empty."),
        (" smtp.example.com", "which contains spaces or control characters."),
        ("smtp.example.com\n", "which contains spaces or control characters."),
        ("smtp\x00.example.com", "which contains spaces or control characters."),
        ("smtps://smtp.example.com", "a URL, not a host name."),
        ("smtp://smtp.example.com:25", "a URL, not a host name."),
        ("[::1]", "in brackets."),
        ("smtp.example.com:587", "which includes a port."),
        ("smtp:abc", "neither a host name nor an IPv6 address."),
        ("2001:db8::zz", "neither a host name nor an IPv6 address."),
        ("smtp.example.com/submit", "not a host name."),
        ("user@smtp.example.com", "not a host name."),
    ],
)
def test_host(host, problem):
    problems = found(provider(HOST=host))
    if problem is None:
        assert problems == []
    else:
        [(id_, message, hint)] = problems
        assert id_ == "E012" and message == f"{P}['HOST'] is {shown(host)}, {problem}"
        assert hint == HOST_HINTS.get(problem, ""), hint


HOST_HINTS = {
    "which is empty.": "Set the SMTP server's name, e.g. 'smtp.example.com'.",
    "a URL, not a host name.": "Give the server's name alone; TLS and PORT say how.",
    "in brackets.": "Write an IPv6 address without brackets, e.g. '2001:db8::25'.",
    "not a host name.": "Give the server's name alone, e.g. 'smtp.example.com'.",
    "which includes a port.": "Put the port in PORT: HOST 'smtp.example.com', PORT 587.",
}


# -- secrets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [(b"hunter2-Secret", "bytes"), (8675309, "int"), (["hunter2-Secret"], "list"), (None, None)],
)
def test_a_mistyped_password_is_named_by_its_type(value, shown):
    problems = found(provider(USERNAME="u", PASSWORD=value))
    text = repr(problems)
    assert "hunter2" not in text and "8675309" not in text
    if shown is not None:
        assert (
            "E003",
            f"{P}['PASSWORD'] must be a string, not {shown}.",
            "",
        ) in problems


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (
            "ya29.secret-Token-value",
            "does not look like a dotted path to a callable (its value is not shown: it may be "
            "the token itself).",
        ),
        ("ya29.a0AfH6SMBxSecretToken", "cannot be imported: no module of that name was found."),
        (
            "tests.helpers.a0AfH6SMBxSecret",
            "cannot be imported: its module has no attribute of that name.",
        ),
        ("tests.helpers.PASSWORD", "is not callable."),
        (
            "tests.raising_import.oauth_token",
            "cannot be imported: importing its module raised RuntimeError.",
        ),
        (b"ya29.secret", None),
    ],
)
def test_an_oauth2_token_in_place_of_its_path_is_not_shown(token, message):
    problems = found(provider(USERNAME="u", OAUTH2_TOKEN=token, AUTH_MECHANISMS=["XOAUTH2"]))
    assert "ya29" not in repr(problems) and "Secret" not in repr(problems)
    if message is None:
        assert problems[0] == ("E003", f"{P}['OAUTH2_TOKEN'] must be a string, not bytes.", "")
    else:
        assert problems[0][:2] == ("E017", f"{P}['OAUTH2_TOKEN'] {message}"), problems
    if token == "ya29.secret-Token-value":
        assert problems[0][2] == (
            "Put the token behind a function and give its path, e.g. 'myproject.mail.oauth_token'."
        )
    assert len(problems) == 1


def test_a_working_oauth2_token_path():
    config = accepted(
        provider(
            USERNAME="u", OAUTH2_TOKEN="tests.helpers.oauth_token", AUTH_MECHANISMS=["XOAUTH2"]
        )
    )
    assert config.provider("main").oauth2_token == "tests.helpers.oauth_token"
    assert accepted(provider(OAUTH2_TOKEN="")).provider("main").oauth2_token == ""


def test_secrets_from_backend_options_are_not_shown_either():
    problems = found(
        provider(),
        overrides={"PASSWORD": b"hunter2-Secret", "USERNAME": "u"},
        override_provider="main",
        override_source="MAILERS['default']['OPTIONS']",
    )
    assert problems == [
        ("E003", "MAILERS['default']['OPTIONS']['password'] must be a string, not bytes.", "")
    ]


# -- boundaries ----------------------------------------------------------------------


def top(key, value):
    return {"PROVIDERS": {"main": OK}, key: value}


def retry(key, value):
    return provider(RETRY={key: value})


def server(key, value):
    return provider(**{key: value})


TEN_YEARS = 3650 * 86400
BOUNDARIES = [
    # (settings builder, key, accepted values, refused values, id of the refusal)
    (server, "PORT", [1, 2525, 65535], [0, -1, 65536, True, 587.0, "587"], "E003"),
    (server, "MAX_CONNECTIONS", [1, 100], [0, 101, 2.0], "E003"),
    (server, "MAX_MESSAGES_PER_CONNECTION", [1, 1_000_000], [0, 1_000_001], "E003"),
    (server, "MAX_RECIPIENTS", [None, 1, 1_000_000], [0, 1_000_001, False], "E003"),
    (server, "TIMEOUT", [0.001, 1, TEN_YEARS], [0, -1, TEN_YEARS + 1, True, "30"], "E003"),
    (top, "LEASE_SECONDS", [1, 45, 86_400], [0, 86_401, 0.5, 45.0, None], "E003"),
    (top, "RETENTION_DAYS", [1, 36_500], [0, 36_501, 1.5], "E003"),
    (top, "TRANSCRIPT_MAX_CHARS", [1, 10_000_000], [0, 10_000_001], "E003"),
    (retry, "MAX_ATTEMPTS", [1, 1000], [0, 1001], "E019"),
    (retry, "JITTER", [0, 0.0, 0.5, 1, 1.0], [-0.001, 1.001, float("nan"), 2], "E019"),
    (retry, "BASE_SECONDS", [0.5, TEN_YEARS], [0, TEN_YEARS + 0.5, float("inf")], "E003"),
    (retry, "MAX_SECONDS", [1, TEN_YEARS], [-1, 10**12], "E003"),
    (retry, "MAX_AGE_SECONDS", [1, TEN_YEARS], [0, 1e300], "E003"),
    (retry, "BACKOFF", ["exponential", "linear", "fixed"], ["Linear", None, 1], "E004"),
]


@pytest.mark.parametrize(
    ("build", "key", "good", "bad", "error"), BOUNDARIES, ids=[b[1] for b in BOUNDARIES]
)
def test_boundaries(build, key, good, bad, error):
    for value in good:
        assert found(build(key, value)) == [], value
    for value in bad:
        problems = found(build(key, value))
        assert len(problems) == 1 and problems[0][0] == error, (value, problems)
        assert f"['{key}']" in problems[0][1]


@pytest.mark.parametrize(
    ("rate", "per"),
    [
        ("1/s", (1, 1)),
        ("60/m", (60, 60)),
        (" 60 / m ", (60, 60)),
        ("100/5m", (100, 300)),
        ("2000/d", (2000, 86400)),
        ("1/1s", (1, 1)),
        ("1000000/h", (1_000_000, 3600)),
        ("1/3650d", (1, TEN_YEARS)),
        (f"1/{TEN_YEARS}s", (1, TEN_YEARS)),
    ],
)
def test_rate_limits(rate, per):
    limit = accepted(provider(RATE_LIMIT=rate)).provider("main").rate_limit
    assert (limit.count, limit.per_seconds) == per


@pytest.mark.parametrize(
    ("rate", "tail"),
    [
        ("0/m", "expected 'COUNT/UNIT' such as '60/m', '10/s', '2000/d' or '100/5m'."),
        ("60", "expected 'COUNT/UNIT' such as '60/m', '10/s', '2000/d' or '100/5m'."),
        ("60/M", "expected 'COUNT/UNIT' such as '60/m', '10/s', '2000/d' or '100/5m'."),
        ("٦٠/m", "expected 'COUNT/UNIT' such as '60/m', '10/s', '2000/d' or '100/5m'."),
        ("1" * 13 + "/m", "expected 'COUNT/UNIT' such as '60/m', '10/s', '2000/d' or '100/5m'."),
        (60, "expected 'COUNT/UNIT' such as '60/m', '10/s', '2000/d' or '100/5m'."),
        ("1/0s", "the period cannot be zero."),
        ("1/00d", "the period cannot be zero."),
        ("1/3651d", "the period must be at most ten years."),
        (f"1/{TEN_YEARS + 1}s", "the period must be at most ten years."),
        ("1000001/s", "the count must be at most 1000000 per period."),
    ],
)
def test_bad_rate_limits(rate, tail):
    assert only(provider(RATE_LIMIT=rate)) == (
        "E018",
        f"{P}['RATE_LIMIT'] is {rate!r}; {tail}",
        "",
    )


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"CODE": 550}, None),
        ({"CODE": 200}, None),
        ({"CODE": 599}, None),
        ({"CODE": 199}, "['CODE'] is 199; expected a reply code like 550 or a class like '4xx'."),
        ({"CODE": 600}, "['CODE'] is 600; expected a reply code like 550 or a class like '4xx'."),
        ({"CODE": "599"}, None),
        ({"CODE": "5xx"}, None),
        ({"CODE": "5XX"}, None),
        ({"CODE": "45x"}, None),
        ({"CODE": 100}, "['CODE'] is 100; expected a reply code like 550 or a class like '4xx'."),
        ({"CODE": 99}, "['CODE'] is 99; expected a reply code like 550 or a class like '4xx'."),
        ({"CODE": 1000}, "['CODE'] is 1000; expected a reply code"),
        ({"CODE": True}, "['CODE'] is True; expected a reply code"),
        ({"CODE": "6xx"}, "['CODE'] is '6xx'; expected a reply code"),
        ({"CODE": "55"}, "['CODE'] is '55'; expected a reply code"),
        # Fullwidth digits: a digit to str.isdigit, not to an SMTP server.
        ({"CODE": "\uff15\uff15\uff10"}, "['CODE'] is '\uff15\uff15\uff10'; expected a reply"),
        ({"ENHANCED": "5.7."}, None),
        ({"ENHANCED": "5."}, None),
        ({"ENHANCED": "4.2.1"}, None),
        ({"ENHANCED": "5.7"}, "['ENHANCED'] is '5.7'; expected an enhanced status code"),
        ({"ENHANCED": "5.1234.1"}, "['ENHANCED'] is '5.1234.1'; expected an enhanced"),
        ({"TEXT": "quota"}, None),
        ({"TEXT": "("}, "['TEXT'] is not a valid regular expression: missing ), unterminated"),
        # Too deep for Python's regular expression compiler: refused, not raised.
        ({"TEXT": "(" * 5000 + ")" * 5000}, "['TEXT'] is not a valid regular expression: max"),
        ({"CODE": 550, "RETRY_AFTER": 0}, "['RETRY_AFTER'] must be a positive number, not 0."),
        ({"CODE": 550, "RETRY_AFTER": 1e300}, "['RETRY_AFTER'] must be at most 315360000"),
        ({"CODE": 550, "PAUSE_PROVIDER": "yes"}, "['PAUSE_PROVIDER'] must be True or False"),
        ({"CODE": 550, "DESCRIPTION": 5}, "['DESCRIPTION'] must be a string, not 5."),
        ({"CODE": 550, "STAGE": "RCPT"}, "['STAGE'] is not a rule key."),
    ],
)
def test_reply_rule_values(values, problem):
    problems = found(rule(OUTCOME="transient", **values))
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0][1].startswith(RULE + problem), problems


def test_a_reply_rule_is_built_from_its_values():
    config = accepted(
        rule(
            CODE=550,
            ENHANCED="5.4.",
            TEXT="quota",
            OUTCOME="provider",
            RETRY_AFTER=0.25,
            PAUSE_PROVIDER=True,
            DESCRIPTION="daily quota",
        )
    )
    [built] = config.provider("main").reply_rules
    assert (built.code, built.enhanced, built.text, built.verdict.value) == (
        "550",
        "5.4.",
        "quota",
        "provider",
    )
    # Half a second must not become "at once": whole seconds, rounded up.
    assert built.retry_after_seconds == 1
    assert built.pause_provider is True and built.description == "daily quota"
    [plain] = accepted(rule(TEXT="x", OUTCOME="permanent")).provider("main").reply_rules
    assert (plain.code, plain.enhanced, plain.retry_after_seconds, plain.description) == (
        "",
        "",
        None,
        "",
    )
    assert plain.pause_provider is False and plain.text == "x"
    [coded] = accepted(rule(CODE="4xx", OUTCOME="transient")).provider("main").reply_rules
    assert (coded.code, coded.text, coded.enhanced) == ("4xx", "", "")


# -- where accepted extremes are used --------------------------------------------------


def test_the_longest_accepted_durations_fit_in_a_datetime():
    config = accepted(
        {
            "PROVIDERS": {
                "main": {
                    **OK,
                    "RATE_LIMIT": "1/3650d",
                    "RETRY": {
                        "MAX_ATTEMPTS": 1000,
                        "BASE_SECONDS": LONGEST_SECONDS,
                        "MAX_SECONDS": LONGEST_SECONDS,
                        "MAX_AGE_SECONDS": LONGEST_SECONDS,
                        "JITTER": 1,
                    },
                    "REPLY_RULES": [{"CODE": 550, "OUTCOME": "provider", "RETRY_AFTER": 3e8}],
                }
            },
            "LEASE_SECONDS": 86_400,
            "RETENTION_DAYS": 36_500,
        }
    )
    main = config.provider("main")
    now = datetime(2025, 1, 1, tzinfo=UTC)
    rng = random.Random(1)
    for attempts in (1, 999):
        delay = retry_delay(main.retry, attempts, hint_seconds=3e8, rng=rng)
        assert now + timedelta(seconds=delay) > now
    assert not should_give_up(main.retry, attempts_so_far=1, created_at=now, now=now)
    assert now + timedelta(seconds=main.rate_limit.per_seconds / main.rate_limit.count) > now
    assert now + timedelta(seconds=config.lease_seconds) > now
    assert now - timedelta(days=config.retention_days) < now


# -- shapes that are not dicts, names that are not strings --------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([], ("E001", "RELIABLE_MAIL must be a dict, not list.")),
        ("x", ("E001", "RELIABLE_MAIL must be a dict, not str.")),
        ({"PROVIDERS": []}, ("E003", "RELIABLE_MAIL['PROVIDERS'] must be a dict, not [].")),
        ({"PROVIDERS": {"main": None}}, ("E003", f"{P} must be a dict, not None.")),
        ({"PROVIDERS": {"main": ["x"]}}, ("E003", f"{P} must be a dict, not ['x'].")),
        (
            {"PROVIDERS": {5: OK}},
            (
                "E005",
                "RELIABLE_MAIL['PROVIDERS'] has a provider named 5; a provider's name must be "
                "a string of 1 to 100 characters.",
            ),
        ),
        ({"PROVIDERS": {"": OK}}, ("E005", "RELIABLE_MAIL['PROVIDERS'] has a provider named ''")),
        (
            {"PROVIDERS": {"x" * 101: OK}},
            ("E005", "RELIABLE_MAIL['PROVIDERS'] has a provider named 'xxxxxxxxxxxx"),
        ),
        (
            {"PROVIDERS": {"main": OK}, "DEFAULT_PROVIDER": ["main"]},
            ("E003", "RELIABLE_MAIL['DEFAULT_PROVIDER'] must be a string, not ['main']."),
        ),
        (
            {"PROVIDERS": {"main": OK}, "ROUTES": {5: "main"}},
            ("E003", "RELIABLE_MAIL['ROUTES'] maps 5, which is not a sender domain."),
        ),
        (
            {"PROVIDERS": {"main": OK}, "ROUTES": {" ": "main"}},
            ("E003", "RELIABLE_MAIL['ROUTES'] maps ' ', which is not a sender domain."),
        ),
        (
            {"PROVIDERS": {"main": OK}, "ROUTES": {"example.com": ["main"]}},
            (
                "E003",
                "RELIABLE_MAIL['ROUTES']['example.com'] must be a provider's name, not ['main'].",
            ),
        ),
        (
            {"PROVIDERS": {"main": OK}, "ROUTES": []},
            ("E003", "RELIABLE_MAIL['ROUTES'] must be a dict, not []."),
        ),
        (
            {"PROVIDERS": {"main": OK}, (1, 2): 3},
            ("E002", "RELIABLE_MAIL[(1, 2)] is not a known setting."),
        ),
        (provider(RETRY=[]), ("E003", f"{P}['RETRY'] must be a dict, not [].")),
        (provider(REPLY_RULES={}), ("E003", f"{P}['REPLY_RULES'] must be a list, not {{}}.")),
        (provider(REPLY_RULES=[5]), ("E003", f"{P}['REPLY_RULES'][0] must be a dict, not 5.")),
        (
            provider(DISABLE_EXTENSIONS="REQUIRETLS"),
            ("E003", f"{P}['DISABLE_EXTENSIONS'] must be a list, not 'REQUIRETLS'."),
        ),
        (
            provider(REGION="Frankfurt"),
            ("E003", f"{P}['REGION'] is 'Frankfurt'; expected an AWS region such as 'eu-west-1'."),
        ),
        (
            provider(LOCAL_HOSTNAME="my host"),
            (
                "E003",
                f"{P}['LOCAL_HOSTNAME'] is 'my host'; expected a host name or an address "
                "literal, no spaces.",
            ),
        ),
        (
            provider(ALLOW_PLAINTEXT_AUTH="yes"),
            ("E003", f"{P}['ALLOW_PLAINTEXT_AUTH'] must be True or False, not 'yes'."),
        ),
        (
            provider(FALLBACK="main"),
            ("E021", f"{P}['FALLBACK'] names the provider itself."),
        ),
    ],
)
def test_shapes_and_names(raw, expected):
    id_, message, _ = only(raw)
    assert id_ == expected[0] and message.startswith(expected[1]), message


def test_values_that_cannot_be_printed_are_described():
    huge = 10**5000
    assert only(top("LEASE_SECONDS", huge))[1] == (
        "RELIABLE_MAIL['LEASE_SECONDS'] must be between 1 and 86400, not an integer of "
        f"{huge.bit_length()} bits."
    )
    assert only(top("MODE", BrokenRepr()))[1] == (
        "RELIABLE_MAIL['MODE'] is a BrokenRepr; expected one of 'queue', 'immediate'."
    )
    long = only(top("MODE", "q" * 100_000))[1]
    assert len(long) < 200 and "..." in long
    nested = []
    nested.append(nested)
    assert only(top("MODE", nested))[1].startswith("RELIABLE_MAIL['MODE'] is [[[[...]]]];")
    with override_settings(RELIABLE_MAIL={"PROVIDERS": {"main": OK}, BrokenRepr(): 1}):
        [message] = check_settings()
    assert message.msg == "RELIABLE_MAIL[a BrokenRepr] is not a known setting."


def test_several_providers_a_default_and_routes():
    two = {"PROVIDERS": {"main": OK, "backup": OK}}
    assert only(two)[:2] == (
        "E005",
        "RELIABLE_MAIL['DEFAULT_PROVIDER'] is required when several providers are defined.",
    )
    assert only(two)[2] == "Choose one of 'main', 'backup'."
    assert only({**two, "DEFAULT_PROVIDER": "bakcup"})[2] == "Did you mean 'backup'?"
    routed = accepted(
        {**two, "DEFAULT_PROVIDER": "main", "ROUTES": {"Billing.EXAMPLE.com": "backup"}}
    )
    assert routed.route("a@billing.example.com") == "backup"
    assert routed.route("a@example.com") == "main"
    assert only({**two, "DEFAULT_PROVIDER": "main", "ROUTES": {"x.com": "bakup"}})[2] == (
        "Did you mean 'backup'?"
    )
    fallback = accepted(
        {
            "PROVIDERS": {"main": {**OK, "FALLBACK": "backup"}, "backup": OK},
            "DEFAULT_PROVIDER": "main",
        }
    )
    assert fallback.provider("main").fallback == "backup"
    with pytest.raises(UnknownProviderError, match="Did you mean 'main'"):
        fallback.provider("mian")


def test_backend_options_are_named_by_their_option_path():
    options = {"override_provider": "main", "override_source": "MAILERS['default']['OPTIONS']"}
    assert only(provider(), overrides={"PORT": "25"}, **options)[:2] == (
        "E003",
        "MAILERS['default']['OPTIONS']['port'] must be an integer, not '25'.",
    )
    assert only(provider(), overrides={"HOTS": "x"}, **options) == (
        "E002",
        "MAILERS['default']['OPTIONS']['hots'] is not a known option.",
        "Did you mean 'host'?",
    )
    # Every option is read, whatever its neighbours.
    for overrides in ({"ZZZ": 1, "PORT": "x"}, {"PORT": "x", "ZZZ": 1}):
        problems = found(provider(), overrides=overrides, **options)
        assert sorted(p[1] for p in problems) == [
            "MAILERS['default']['OPTIONS']['port'] must be an integer, not 'x'.",
            "MAILERS['default']['OPTIONS']['zzz'] is not a known option.",
        ]
    assert only(provider(), overrides={5: "x"}, **options)[1] == (
        "MAILERS['default']['OPTIONS'][5] is not a known option."
    )
    assert only(provider(), overrides={"ZZZ": "x"}, **options)[2] == (
        "Options are Django's SMTP backend arguments (host, password, port, ssl_certfile, "
        "ssl_keyfile, timeout, use_ssl, use_tls, username) and the provider keys in lower case: "
        "preset, region, host, port, tls, ca_file, client_certfile, client_keyfile, "
        "username, password, oauth2_token, disable_extensions, auth_mechanisms, timeout, "
        "local_hostname, allow_plaintext_auth, max_connections, max_messages_per_connection, "
        "max_recipients, rate_limit, retry, reply_rules, fallback."
    )
    config, _ = validate(provider(), overrides={"PORT": 2525}, **options)
    assert config.provider("main").port == 2525
    assert config.raw_providers["main"]["PORT"] == 2525
    # Options for another provider leave this one alone.
    other = validate(provider(), overrides={"PORT": "x"}, override_provider="else")[0]
    assert other.provider("main").port == 587


def test_djangos_email_settings_are_checked_too(settings):
    del settings.RELIABLE_MAIL
    settings.EMAIL_HOST, settings.EMAIL_PORT = "smtp.example.com:25", "25"
    messages = {m.msg for m in check_settings()}
    # Each problem names the Django setting it is about.
    assert messages == {
        "EMAIL_HOST is 'smtp.example.com:25', which includes a port.",
        "EMAIL_PORT must be an integer, not '25'.",
    }


@pytest.mark.parametrize(
    "q_cluster", [{"timeout": "60", "retry": None}, {"timeout": 60, "retry": [1]}, ["orm"]]
)
def test_the_q_cluster_check_takes_any_shape(q_cluster):
    from django_reliable_mail.checks import check_q_cluster

    with override_settings(
        RELIABLE_MAIL={"PROVIDERS": {"main": OK}, "MODE": "queue"}, Q_CLUSTER=q_cluster
    ):
        ids = [m.id for m in check_q_cluster()]
    assert "reliable_mail.W011" not in ids


# -- cross-field rules: each one exactly, and none of them on a value already refused ------

TOKEN = "tests.helpers.oauth_token"
E015_IMPLICIT = "Use TLS 'starttls' on port 587, or port 465 for implicit TLS."
E015_PLAIN = "Use TLS 'implicit' on port 465, or port 587 for STARTTLS."
W001_HINT = (
    "Use TLS 'starttls' or 'implicit', or set ALLOW_PLAINTEXT_AUTH: True for a trusted local relay."
)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"TLS": "implicit", "PORT": 25},
            [
                (
                    "E015",
                    f"{P}['TLS'] is 'implicit' but {P}['PORT'] is 25, a plain-text port that "
                    "upgrades with STARTTLS.",
                    E015_IMPLICIT,
                )
            ],
        ),
        ({"TLS": "implicit", "PORT": 2465}, []),
        ({"TLS": "implicit", "PORT": None}, []),
        (
            {"TLS": "none", "PORT": 465},
            [
                (
                    "E015",
                    f"{P}['TLS'] is 'none' but {P}['PORT'] is 465, which expects TLS from the "
                    "first byte.",
                    E015_PLAIN,
                )
            ],
        ),
        ({"TLS": "ssl", "PORT": 465}, ["E004"]),
        ({"TLS": "implicit", "PORT": "25"}, ["E003"]),
        (
            {"PRESET": "strato", "TLS": "none", "PORT": 25},
            [
                (
                    "E016",
                    f"{P}['TLS'] is 'none' but preset 'strato' requires TLS ('implicit').",
                    "Credentials and mail would cross the network in clear; remove the TLS "
                    "override.",
                )
            ],
        ),
        ({"PRESET": "strato", "TLS": "opportunistic", "PORT": 25}, []),
        ({"PRESET": "strato", "TLS": 0, "PORT": 25}, ["E004"]),
        (
            {"DISABLE_EXTENSIONS": ["starttls"]},
            [
                (
                    "E016",
                    f"{P}['DISABLE_EXTENSIONS'] disables STARTTLS but {P}['TLS'] is "
                    "'starttls', which requires it.",
                    "Use TLS 'none' to send without encryption, or stop disabling STARTTLS.",
                )
            ],
        ),
        ({"TLS": "opportunistic", "PORT": 25, "DISABLE_EXTENSIONS": ["STARTTLS"]}, []),
        ({"DISABLE_EXTENSIONS": ["STARTTLS", "NOPE"]}, ["E013"]),
        (
            {"PASSWORD": "p"},
            [("E017", f"{P}['PASSWORD'] is set but {P}['USERNAME'] is not.", "")],
        ),
        (
            {"OAUTH2_TOKEN": TOKEN},
            [("E017", f"{P}['OAUTH2_TOKEN'] is set but {P}['USERNAME'] is not.", "")],
        ),
        (
            {"PASSWORD": "p", "OAUTH2_TOKEN": TOKEN},
            [("E017", f"{P}['PASSWORD'] is set but {P}['USERNAME'] is not.", "")],
        ),
        ({"USERNAME": "u", "OAUTH2_TOKEN": TOKEN}, []),
        ({"USERNAME": 5}, ["E003"]),
        ({"PASSWORD": b"p"}, ["E003"]),
        ({"OAUTH2_TOKEN": 5}, ["E003"]),
        ({"USERNAME": "u", "PASSWORD": 5}, ["E003"]),
        ({"USERNAME": "u", "OAUTH2_TOKEN": "x.y"}, ["E017"]),
        ({"USERNAME": 5, "AUTH_MECHANISMS": ["PLAIN"]}, ["E003"]),
        ({"AUTH_MECHANISMS": []}, []),
        ({"AUTH_MECHANISMS": ["NOPE"]}, ["E014"]),
        (
            {"USERNAME": "u", "OAUTH2_TOKEN": TOKEN, "AUTH_MECHANISMS": ["PLAIN"]},
            [
                (
                    "E017",
                    f"{P}['OAUTH2_TOKEN'] is set but {P}['AUTH_MECHANISMS'] does not include "
                    "'XOAUTH2'.",
                    "",
                )
            ],
        ),
        ({"USERNAME": "u", "OAUTH2_TOKEN": TOKEN, "AUTH_MECHANISMS": ["PLAIN", "x"]}, ["E014"]),
        (
            {"USERNAME": "u", "PASSWORD": "p", "DISABLE_EXTENSIONS": ["auth"]},
            [
                (
                    "E017",
                    f"{P}['DISABLE_EXTENSIONS'] disables AUTH but credentials are configured.",
                    "",
                )
            ],
        ),
        ({"DISABLE_EXTENSIONS": ["AUTH"]}, []),
        ({"USERNAME": 5, "DISABLE_EXTENSIONS": ["AUTH"]}, ["E003"]),
        ({"USERNAME": "u", "PASSWORD": "p", "DISABLE_EXTENSIONS": ["AUTH", 5]}, ["E013"]),
        (
            {"TLS": "opportunistic", "PORT": 25, "USERNAME": "u", "PASSWORD": "p"},
            [
                (
                    "W001",
                    f"{P}['TLS'] is 'opportunistic' and credentials are configured: they will "
                    "not be sent without TLS, so delivery fails until TLS is available.",
                    W001_HINT,
                )
            ],
        ),
        (
            {"TLS": "none", "PORT": 25, "USERNAME": "u", "PASSWORD": "p"},
            [
                (
                    "W001",
                    f"{P}['TLS'] is 'none' and credentials are configured: they will not be "
                    "sent without TLS, so delivery fails until TLS is available.",
                    W001_HINT,
                )
            ],
        ),
        (
            {
                "TLS": "none",
                "PORT": 25,
                "USERNAME": "u",
                "PASSWORD": "p",
                "ALLOW_PLAINTEXT_AUTH": True,
            },
            [],
        ),
        (
            {
                "TLS": "none",
                "PORT": 25,
                "USERNAME": "u",
                "PASSWORD": "p",
                "ALLOW_PLAINTEXT_AUTH": 1,
            },
            ["E003"],
        ),
        ({"TLS": "none", "PORT": 25, "USERNAME": 5, "PASSWORD": "p"}, ["E003"]),
        (
            {"FALLBACK": "mian"},
            [
                (
                    "E021",
                    f"{P}['FALLBACK'] is 'mian', which is not a configured provider.",
                    "Did you mean 'main'?",
                )
            ],
        ),
        ({"FALLBACK": "main"}, [("E021", f"{P}['FALLBACK'] names the provider itself.", "")]),
        ({"FALLBACK": 5}, ["E003"]),
        ({"HOST": None}, [("E012", f"{P}['HOST'] is required (or a PRESET that sets it).", "")]),
        ({"HOST": 5}, ["E003"]),
    ],
)
def test_cross_field_rules(values, expected):
    problems = found(provider(**values))
    if expected and isinstance(expected[0], str):
        assert [p[0] for p in problems] == expected, problems
    else:
        assert problems == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            retry("JITTER", "0.2"),
            f"{P}['RETRY']['JITTER'] must be an integer or a number, not '0.2'.",
        ),
        (
            retry("BASE_SECONDS", None),
            f"{P}['RETRY']['BASE_SECONDS'] must be an integer or a number, not None.",
        ),
        (
            provider(HOST=["smtp.example.com"]),
            f"{P}['HOST'] must be a string, not ['smtp.example.com'].",
        ),
        (provider(CA_FILE=5), f"{P}['CA_FILE'] must be a string, not 5."),
        (provider(REGION=5), f"{P}['REGION'] must be a string, not 5."),
        (
            provider(MAX_RECIPIENTS=0),
            f"{P}['MAX_RECIPIENTS'] must be between 1 and 1000000, not 0.",
        ),
        (retry("JITTER", 2), f"{P}['RETRY']['JITTER'] must be between 0 and 1, not 2."),
        (
            retry("MAX_SECONDS", -1),
            f"{P}['RETRY']['MAX_SECONDS'] must be a positive number, not -1.",
        ),
        (
            retry("MAX_SECONDS", 10**12),
            f"{P}['RETRY']['MAX_SECONDS'] must be at most 315360000 (ten years), "
            "not 1000000000000.",
        ),
        (
            provider(DISABLE_EXTENSIONS=["X"]),
            f"{P}['DISABLE_EXTENSIONS'][0] is 'X', not a known EHLO extension.",
        ),
    ],
)
def test_type_and_range_messages(raw, message):
    id_, text, hint = only(raw)
    assert text == message
    assert id_ in ("E003", "E019", "E013")
    if id_ != "E013":
        assert hint == ""


def test_hints_of_choices_keys_and_lists():
    assert only(top("MODE", "zzz")) == (
        "E004",
        "RELIABLE_MAIL['MODE'] is 'zzz'; expected one of 'queue', 'immediate'.",
        "",
    )
    assert only(top("MODE", "queu"))[2] == "Did you mean 'queue'?"
    assert only(top("ZZZ", 1)) == (
        "E002",
        "RELIABLE_MAIL['ZZZ'] is not a known setting.",
        "Known keys: DEFAULT_PROVIDER, LEASE_SECONDS, MODE, PROVIDERS, RETENTION_DAYS, ROUTES, "
        "SMTP_PROCESS, STALLED_QUEUE_SECONDS, TRANSCRIPTS, TRANSCRIPT_MAX_CHARS, "
        "UNKNOWN_OUTCOME.",
    )
    assert only(provider(USERNAME="u", PASSWORD="p", AUTH_MECHANISMS=["ZZZ"])) == (
        "E014",
        f"{P}['AUTH_MECHANISMS'][0] is 'ZZZ', not a supported AUTH mechanism.",
        "Supported: XOAUTH2, CRAM-MD5, PLAIN, LOGIN.",
    )
    assert only(retry("MAX_ATEMPTS", 3))[2] == "Did you mean 'MAX_ATTEMPTS'?"
    assert only(rule(CODE=550, OUTCOME="transient", STAGE="RCPT"))[2].startswith(
        "Known keys: CODE, DESCRIPTION, ENHANCED"
    )


def test_providers_missing_empty_or_named_at_the_limit():
    example = 'e.g. "PROVIDERS": {"main": {"PRESET": "strato", "USERNAME": ..., "PASSWORD": ...}}'
    for raw in ({}, {"PROVIDERS": {}}, {"PROVIDERS": None}):
        assert only(raw) == (
            "E005",
            "RELIABLE_MAIL['PROVIDERS'] must define at least one provider.",
            example,
        )
    assert accepted({"PROVIDERS": {"x" * 100: OK}}).default_provider == "x" * 100
    assert only(rule(CODE=550)) == (
        "E020",
        f"{RULE}['OUTCOME'] is None; expected one of 'transient', 'permanent', 'provider'.",
        "",
    )


def test_routes_beside_a_broken_one_are_still_checked():
    problems = found({"PROVIDERS": {"main": OK}, "ROUTES": {5: "main", "x.com": "mian"}})
    assert problems == [
        (
            "E003",
            "RELIABLE_MAIL['ROUTES'] maps 5, which is not a sender domain.",
            "Keys are domains such as 'billing.example.com'.",
        ),
        (
            "E022",
            "RELIABLE_MAIL['ROUTES']['x.com'] is 'mian', which is not a configured provider.",
            "Did you mean 'main'?",
        ),
    ]
