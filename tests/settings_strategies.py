"""Hypothesis strategies for RELIABLE_MAIL: garbage of every shape, secrets, valid settings."""

import string

from hypothesis import strategies as st

from django_reliable_mail.smtp.capabilities import KNOWN_EXTENSIONS, SUPPORTED_AUTH_MECHANISMS

OK = {"HOST": "smtp.example.com", "PORT": 587, "TLS": "starttls"}
TEN_YEARS = 3650 * 86400


class BrokenRepr:
    """A value whose repr raises: messages must still be written."""

    def __repr__(self):
        raise RuntimeError("no repr")


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, -1, 2**63, 10**12])
    # Past 4300 digits Python refuses to print an integer (built, so the strategy prints).
    | st.builds(
        lambda digits, sign: sign * 10**digits,
        st.sampled_from([400, 5000]),
        st.sampled_from([1, -1]),
    )
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["", " ", "smtp.example.com:587", "5.7.", "60/m", "1/0m", "x" * 10_000])
    | st.binary(max_size=20)
    | st.builds(BrokenRepr)
)
hashable = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=20)
    | st.binary(max_size=8)
    | st.tuples(st.integers(), st.text(max_size=5))
    | st.frozensets(st.integers(), max_size=3)
)
anything = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(hashable, inner, max_size=4)
        | st.dictionaries(st.sampled_from(["CODE", "TEXT", "OUTCOME", "MAX_ATTEMPTS"]), inner)
    ),
    max_leaves=12,
)

#: Secrets carry a marker no message could hold by chance; some look like dotted paths,
#: as some OAuth tokens do ("ya29.a0Af...").
_SECRET_BODY = st.text(alphabet=string.ascii_letters + string.digits, min_size=10, max_size=30)
secret_values = st.builds(lambda body: "S3cr3t" + body, _SECRET_BODY) | st.builds(
    lambda head, tail: f"S3cr3t{head}.{tail}", _SECRET_BODY, _SECRET_BODY
)

_label = st.from_regex(r"[a-z][a-z0-9-]{0,12}[a-z0-9]", fullmatch=True)
hosts = st.lists(_label, min_size=1, max_size=4).map(".".join) | st.sampled_from(
    ["127.0.0.1", "::1", "2001:db8::25", "localhost", "smtp.bücher.de"]
)
_positive_seconds = st.integers(1, TEN_YEARS) | st.floats(
    min_value=0.001, max_value=TEN_YEARS, allow_nan=False
)


@st.composite
def tls_and_port(draw):
    tls = draw(st.sampled_from(["implicit", "starttls", "opportunistic", "none"]))
    if tls == "implicit":
        port = draw(st.just(465) | st.integers(1, 65535).filter(lambda p: p not in (25, 587)))
    else:
        port = draw(st.sampled_from([25, 587, 2525]) | st.integers(1, 65535))
        port = 587 if port == 465 else port
    return tls, port


@st.composite
def rate_limits(draw):
    unit, seconds = draw(st.sampled_from([("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]))
    multiple = draw(st.integers(1, TEN_YEARS // seconds))
    count = draw(st.integers(1, 1_000_000))
    return f"{count}/{multiple if multiple > 1 or draw(st.booleans()) else ''}{unit}"


@st.composite
def reply_rules(draw):
    rule = {"OUTCOME": draw(st.sampled_from(["transient", "permanent", "provider"]))}
    conditions = {
        "CODE": st.sampled_from(["550", "4xx", "55x", 421, "5XX"]),
        "ENHANCED": st.sampled_from(["5.4.5", "5.7.", "4.", "5.1.1"]),
        "TEXT": st.sampled_from([r"quota", r"rate (limit|exceeded)", "x"]),
    }
    keys = draw(st.lists(st.sampled_from(sorted(conditions)), min_size=1, unique=True))
    for key in keys:
        rule[key] = draw(conditions[key])
    if draw(st.booleans()):
        rule["RETRY_AFTER"] = draw(_positive_seconds)
    if draw(st.booleans()):
        rule["PAUSE_PROVIDER"] = draw(st.booleans())
    if draw(st.booleans()):
        rule["DESCRIPTION"] = draw(st.text(max_size=30))
    return rule


@st.composite
def retry_settings(draw):
    options = {
        "MAX_ATTEMPTS": st.integers(1, 1000),
        "BACKOFF": st.sampled_from(["exponential", "linear", "fixed"]),
        "BASE_SECONDS": _positive_seconds,
        "MAX_SECONDS": _positive_seconds,
        "MAX_AGE_SECONDS": _positive_seconds,
        "JITTER": st.sampled_from([0, 1, 0.0, 0.5]) | st.floats(0, 1),
    }
    keys = draw(st.lists(st.sampled_from(sorted(options)), unique=True))
    return {key: draw(options[key]) for key in keys}


@st.composite
def credentials(draw, tls):
    kind = draw(st.sampled_from(["none", "password", "token"]))
    if kind == "none":
        return {}
    values = {"USERNAME": draw(st.text(min_size=1, max_size=20))}
    if kind == "password":
        values["PASSWORD"] = draw(st.text(min_size=1, max_size=20))
        if draw(st.booleans()):
            values["AUTH_MECHANISMS"] = draw(
                st.lists(st.sampled_from(SUPPORTED_AUTH_MECHANISMS), min_size=1, unique=True)
            )
    else:
        values["OAUTH2_TOKEN"] = "tests.helpers.oauth_token"
        values["AUTH_MECHANISMS"] = ["XOAUTH2", *draw(st.sampled_from([[], ["PLAIN"]]))]
    if tls in ("none", "opportunistic"):
        values["ALLOW_PLAINTEXT_AUTH"] = draw(st.booleans())
    return values


@st.composite
def provider_settings(draw, name, names):
    tls, port = draw(tls_and_port())
    values = {"HOST": draw(hosts), "PORT": port, "TLS": tls, **draw(credentials(tls))}
    forbidden = {"STARTTLS"} if tls == "starttls" else set()
    forbidden |= {"AUTH"} if "USERNAME" in values else set()
    extensions = sorted(KNOWN_EXTENSIONS - forbidden)
    optional = {
        "DISABLE_EXTENSIONS": st.lists(st.sampled_from(extensions), max_size=3),
        "TIMEOUT": _positive_seconds,
        "LOCAL_HOSTNAME": st.from_regex(r"[!-~]{1,30}", fullmatch=True) | st.just("[192.0.2.1]"),
        "MAX_CONNECTIONS": st.integers(1, 100),
        "MAX_MESSAGES_PER_CONNECTION": st.integers(1, 1_000_000),
        "MAX_RECIPIENTS": st.none() | st.integers(1, 1_000_000),
        "RATE_LIMIT": st.none() | rate_limits(),
        "RETRY": retry_settings(),
        "REPLY_RULES": st.lists(reply_rules(), max_size=3),
        "FALLBACK": st.sampled_from(sorted(set(names) - {name})) if len(names) > 1 else st.none(),
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        values[key] = draw(optional[key])
    return values


@st.composite
def valid_settings(draw):
    names = draw(
        st.lists(
            st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    raw = {"PROVIDERS": {name: draw(provider_settings(name, names)) for name in names}}
    if len(names) > 1 or draw(st.booleans()):
        raw["DEFAULT_PROVIDER"] = draw(st.sampled_from(names))
    optional = {
        "ROUTES": st.dictionaries(hosts, st.sampled_from(names), max_size=3),
        "MODE": st.sampled_from(["queue", "immediate"]),
        "TRANSCRIPTS": st.sampled_from(["always", "failures", "never"]),
        "TRANSCRIPT_MAX_CHARS": st.integers(1, 10_000_000),
        "RETENTION_DAYS": st.integers(1, 36_500),
        "UNKNOWN_OUTCOME": st.sampled_from(["retry", "hold"]),
        "LEASE_SECONDS": st.integers(1, 86_400),
        "SMTP_PROCESS": st.sampled_from(["auto", "always", "never"]),
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        raw[key] = draw(optional[key])
    return raw
