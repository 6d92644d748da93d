"""Settings: read lazily, validated in one place, frozen into dataclasses.

Precedence for a provider's values: backend keyword options (a Django 6.1 ``MAILERS``
entry's OPTIONS, or ``get_connection(**kwargs)``) → ``RELIABLE_MAIL["PROVIDERS"][name]`` →
the provider's ``PRESET`` → defaults. Without ``RELIABLE_MAIL``, one provider named
``default`` is built from Django's ``EMAIL_*`` settings.

Every problem is a :class:`Problem` with a stable id; ``checks.py`` turns them into system
check messages and :func:`get_config` into one :class:`ReliableMailConfigError`.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from .exceptions import ReliableMailConfigError, UnknownProviderError
from .providers import PRESETS, preset
from .smtp.capabilities import KNOWN_EXTENSIONS, SUPPORTED_AUTH_MECHANISMS
from .smtp.classify import ReplyRule, Verdict
from .smtp.transport import TLS_MODES, ServerSettings

SETTING = "RELIABLE_MAIL"
MODES = ("queue", "immediate")
TRANSCRIPT_POLICIES = ("always", "failures", "never")
UNKNOWN_POLICIES = ("retry", "hold")
#: Where a batch's SMTP work runs: "auto" (streaming batches in a helper process of the
#: worker's when the machine has a second core), "always" (every batch), "never".
SMTP_PROCESS_POLICIES = ("auto", "always", "never")
BACKOFFS = ("exponential", "linear", "fixed")
RULE_OUTCOMES = {v.value: v for v in Verdict if v != Verdict.OK}

TOP_LEVEL_DEFAULTS: dict[str, Any] = {
    "DEFAULT_PROVIDER": None,
    "PROVIDERS": None,
    "ROUTES": {},
    "MODE": "queue",
    "TRANSCRIPTS": "always",
    "TRANSCRIPT_MAX_CHARS": 64 * 1024,
    "RETENTION_DAYS": 30,
    "UNKNOWN_OUTCOME": "retry",
    "LEASE_SECONDS": 300,
    "SMTP_PROCESS": "auto",
}
PROVIDER_DEFAULTS: dict[str, Any] = {
    "PRESET": None,
    "REGION": None,
    "HOST": None,
    "PORT": None,
    "TLS": "starttls",
    "CA_FILE": None,
    "USERNAME": None,
    "PASSWORD": None,
    "OAUTH2_TOKEN": None,
    "DISABLE_EXTENSIONS": [],
    "AUTH_MECHANISMS": list(SUPPORTED_AUTH_MECHANISMS),
    "TIMEOUT": 30,
    "LOCAL_HOSTNAME": None,
    "ALLOW_PLAINTEXT_AUTH": False,
    "MAX_CONNECTIONS": 2,
    "MAX_MESSAGES_PER_CONNECTION": 100,
    "MAX_RECIPIENTS": None,
    "RATE_LIMIT": None,
    "RETRY": {},
    "REPLY_RULES": [],
    "FALLBACK": None,
}
RETRY_DEFAULTS: dict[str, Any] = {
    "MAX_ATTEMPTS": 8,
    "BACKOFF": "exponential",
    "BASE_SECONDS": 60,
    "MAX_SECONDS": 3600,
    "MAX_AGE_SECONDS": 86400,
    "JITTER": 0.2,
}
RULE_KEYS = ("CODE", "ENHANCED", "TEXT", "OUTCOME", "RETRY_AFTER", "PAUSE_PROVIDER", "DESCRIPTION")
DEFAULT_PORTS = {"implicit": 465, "starttls": 587, "opportunistic": 25, "none": 25}
RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")
RATE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# -- the frozen configuration ------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    backoff: str = "exponential"
    base_seconds: float = 60
    max_seconds: float = 3600
    max_age_seconds: float = 86400
    jitter: float = 0.2


@dataclass(frozen=True)
class RateLimit:
    count: int
    per_seconds: int

    def __str__(self) -> str:
        return f"{self.count}/{self.per_seconds}s"


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    host: str
    port: int
    tls: str
    preset: str | None = None
    ca_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    oauth2_token: str | None = None
    disable_extensions: frozenset[str] = frozenset()
    auth_mechanisms: tuple[str, ...] = SUPPORTED_AUTH_MECHANISMS
    timeout: float = 30
    local_hostname: str | None = None
    allow_plaintext_auth: bool = False
    max_connections: int = 2
    max_messages_per_connection: int = 100
    max_recipients: int | None = None
    rate_limit: RateLimit | None = None
    retry: RetryPolicy = RetryPolicy()
    reply_rules: tuple[ReplyRule, ...] = ()
    fallback: str | None = None

    def server_settings(self, *, transcript_max_chars: int, record: bool) -> ServerSettings:
        token = import_string(self.oauth2_token) if self.oauth2_token else None
        return ServerSettings(
            host=self.host,
            port=self.port,
            tls=self.tls,
            ca_file=self.ca_file,
            username=self.username,
            password=self.password,
            oauth2_token=token,
            auth_mechanisms=self.auth_mechanisms,
            disable_extensions=self.disable_extensions,
            timeout=self.timeout,
            local_hostname=self.local_hostname,
            allow_plaintext_auth=self.allow_plaintext_auth,
            reply_rules=self.reply_rules,
            max_recipients=self.max_recipients,
            transcript_max_chars=transcript_max_chars,
            record_transcript=record,
        )


@dataclass(frozen=True)
class Config:
    providers: Mapping[str, ProviderConfig]
    default_provider: str
    routes: Mapping[str, str] = field(default_factory=dict)
    mode: str = "queue"
    transcripts: str = "always"
    transcript_max_chars: int = 64 * 1024
    retention_days: int = 30
    unknown_outcome: str = "retry"
    lease_seconds: int = 300
    smtp_process: str = "auto"
    #: Where the raw settings came from, for error messages.
    source: str = SETTING
    #: The raw provider dicts (after presets), so backend options can override a key.
    raw_providers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)

    def provider(self, name: str) -> ProviderConfig:
        try:
            return self.providers[name]
        except KeyError:
            raise UnknownProviderError(
                f"Unknown provider {name!r}; {self.source}['PROVIDERS'] defines "
                f"{', '.join(sorted(self.providers)) or 'none'}."
                + _did_you_mean(name, self.providers)
            ) from None

    def route(self, from_email: str) -> str:
        """The provider for a sender: ROUTES by sender domain, else DEFAULT_PROVIDER."""
        domain = from_email.rpartition("@")[2].lower()
        return self.routes.get(domain, self.default_provider)


# -- problems ------------------------------------------------


@dataclass(frozen=True)
class Problem:
    id: str
    message: str
    hint: str = ""
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def _did_you_mean(value: Any, choices: Any) -> str:
    if not isinstance(value, str):
        return ""
    match = difflib.get_close_matches(value.upper(), [str(c).upper() for c in choices], n=1)
    if not match:
        return ""
    original = next(c for c in choices if str(c).upper() == match[0])
    return f" Did you mean {original!r}?"


def _type_name(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "True or False",
        list: "a list",
        tuple: "a list",
        dict: "a dict",
        type(None): "None",
    }
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


class _Validator:
    """Walks the raw settings, collecting problems and building the frozen config."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def path(self, *keys: Any) -> str:
        return self.source + "".join(f"[{k!r}]" for k in keys)

    def error(self, id: str, message: str, hint: str = "") -> None:
        self.problems.append(Problem(f"reliable_mail.{id}", message, hint))

    def warn(self, id: str, message: str, hint: str = "") -> None:
        self.problems.append(Problem(f"reliable_mail.{id}", message, hint, warning=True))

    def unknown_keys(self, data: Mapping[str, Any], allowed: Any, *keys: Any) -> None:
        for key in data:
            if key not in allowed:
                self.error(
                    "E002",
                    f"{self.path(*keys, key)} is not a known setting.",
                    ("Did you mean " + repr(m[0]) + "?")
                    if (m := difflib.get_close_matches(str(key).upper(), list(allowed), n=1))
                    else "Known keys: " + ", ".join(sorted(allowed)) + ".",
                )

    def typed(self, value: Any, types: type | tuple[type, ...], *keys: Any) -> bool:
        # bool is an int subclass; a port of True is a mistake, not a number.
        if isinstance(value, bool) and bool not in (
            types if isinstance(types, tuple) else (types,)
        ):
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            self.error(
                "E003",
                f"{self.path(*keys)} must be {_type_name(types)}, not {value!r}.",
            )
        return ok

    def choice(self, value: Any, choices: tuple[str, ...], *keys: Any) -> bool:
        if value in choices:
            return True
        self.error(
            "E004",
            f"{self.path(*keys)} is {value!r}; expected one of {', '.join(map(repr, choices))}.",
            _did_you_mean(value, choices).strip(),
        )
        return False

    def positive(self, value: Any, *keys: Any, allow_zero: bool = False) -> bool:
        if not self.typed(value, (int, float), *keys):
            return False
        if value < 0 or (value == 0 and not allow_zero):
            self.error("E003", f"{self.path(*keys)} must be a positive number, not {value!r}.")
            return False
        return True


# -- reading the settings ------------------------------------------------


def _django_email_provider() -> dict[str, Any]:
    """Provider values from Django's EMAIL_* settings (deprecated on 6.1, still honoured)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(settings, "MAILERS"):
            # EMAIL_* settings cannot coexist with MAILERS on Django 6.1.
            return {"HOST": "localhost", "PORT": 25, "TLS": "none"}
        use_ssl = bool(getattr(settings, "EMAIL_USE_SSL", False))
        use_tls = bool(getattr(settings, "EMAIL_USE_TLS", False))
        values = {
            "HOST": getattr(settings, "EMAIL_HOST", "localhost"),
            "PORT": getattr(settings, "EMAIL_PORT", 25),
            "USERNAME": getattr(settings, "EMAIL_HOST_USER", "") or None,
            "PASSWORD": getattr(settings, "EMAIL_HOST_PASSWORD", "") or None,
            "TLS": "implicit" if use_ssl else "starttls" if use_tls else "none",
        }
        timeout = getattr(settings, "EMAIL_TIMEOUT", None)
        if timeout is not None:
            values["TIMEOUT"] = timeout
    return values


#: Django SMTP backend option names accepted as backend keyword options.
DJANGO_OPTION_ALIASES = {"use_tls", "use_ssl"}


def options_to_provider_keys(options: Mapping[str, Any]) -> dict[str, Any]:
    """Backend keyword options (lower case) → provider keys (upper case)."""
    keys: dict[str, Any] = {}
    for name, value in options.items():
        if name == "use_ssl":
            if value:
                keys["TLS"] = "implicit"
        elif name == "use_tls":
            if value and keys.get("TLS") != "implicit":
                keys["TLS"] = "starttls"
        else:
            keys[name.upper()] = value
    return keys


def validate(
    raw: Any = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    override_provider: str | None = None,
    override_source: str = "OPTIONS",
) -> tuple[Config | None, list[Problem]]:
    """Validate ``RELIABLE_MAIL`` (read from settings when ``raw`` is None).

    ``overrides`` are provider keys applied on top of ``override_provider`` (backend options).
    """
    if raw is None:
        raw = getattr(settings, SETTING, None)
    v = _Validator(SETTING)
    if raw is None:
        raw = {"DEFAULT_PROVIDER": "default", "PROVIDERS": {"default": _django_email_provider()}}
        v.source = "Django's EMAIL_* settings → " + SETTING
    if not isinstance(raw, Mapping):
        v.error("E001", f"{SETTING} must be a dict, not {type(raw).__name__}.")
        return None, v.problems

    v.unknown_keys(raw, TOP_LEVEL_DEFAULTS)
    top = {**TOP_LEVEL_DEFAULTS, **raw}
    providers_raw = top["PROVIDERS"]
    if providers_raw is None or (isinstance(providers_raw, Mapping) and not providers_raw):
        v.error(
            "E005",
            f"{v.path('PROVIDERS')} must define at least one provider.",
            'e.g. "PROVIDERS": {"main": {"PRESET": "strato", "USERNAME": ..., "PASSWORD": ...}}',
        )
        providers_raw = {}
    elif not v.typed(providers_raw, dict, "PROVIDERS"):
        providers_raw = {}

    providers: dict[str, ProviderConfig] = {}
    merged_raw: dict[str, dict[str, Any]] = {}
    for name, values in providers_raw.items():
        extra = overrides if (overrides and name == override_provider) else None
        built = _provider(v, name, values, extra, override_source)
        if built is not None:
            providers[name], merged_raw[name] = built

    default = top["DEFAULT_PROVIDER"]
    if default is None and len(providers_raw) == 1:
        default = next(iter(providers_raw))
    if default is None:
        if providers_raw:
            v.error(
                "E005",
                f"{v.path('DEFAULT_PROVIDER')} is required when several providers are defined.",
                "Choose one of " + ", ".join(map(repr, providers_raw)) + ".",
            )
    elif default not in providers_raw:
        v.error(
            "E005",
            f"{v.path('DEFAULT_PROVIDER')} is {default!r}, which is not in {v.path('PROVIDERS')}.",
            _did_you_mean(default, list(providers_raw)).strip(),
        )

    for name, provider in providers.items():
        if provider.fallback is not None and provider.fallback not in providers_raw:
            v.error(
                "E021",
                f"{v.path('PROVIDERS', name, 'FALLBACK')} is {provider.fallback!r}, "
                "which is not a configured provider.",
                _did_you_mean(provider.fallback, list(providers_raw)).strip(),
            )
        elif provider.fallback == name:
            v.error("E021", f"{v.path('PROVIDERS', name, 'FALLBACK')} names the provider itself.")

    routes = top["ROUTES"]
    if v.typed(routes, dict, "ROUTES"):
        for domain, target in routes.items():
            if target not in providers_raw:
                v.error(
                    "E022",
                    f"{v.path('ROUTES', domain)} is {target!r}, "
                    "which is not a configured provider.",
                    _did_you_mean(target, list(providers_raw)).strip(),
                )
        routes = {str(d).lower(): t for d, t in routes.items()}
    else:
        routes = {}

    v.choice(top["MODE"], MODES, "MODE")
    v.choice(top["TRANSCRIPTS"], TRANSCRIPT_POLICIES, "TRANSCRIPTS")
    v.choice(top["UNKNOWN_OUTCOME"], UNKNOWN_POLICIES, "UNKNOWN_OUTCOME")
    v.positive(top["TRANSCRIPT_MAX_CHARS"], "TRANSCRIPT_MAX_CHARS")
    v.positive(top["RETENTION_DAYS"], "RETENTION_DAYS")
    v.positive(top["LEASE_SECONDS"], "LEASE_SECONDS")
    v.choice(top["SMTP_PROCESS"], SMTP_PROCESS_POLICIES, "SMTP_PROCESS")

    if any(not p.warning for p in v.problems):
        return None, v.problems
    config = Config(
        providers=providers,
        default_provider=default,
        routes=routes,
        mode=top["MODE"],
        transcripts=top["TRANSCRIPTS"],
        transcript_max_chars=int(top["TRANSCRIPT_MAX_CHARS"]),
        retention_days=int(top["RETENTION_DAYS"]),
        unknown_outcome=top["UNKNOWN_OUTCOME"],
        lease_seconds=int(top["LEASE_SECONDS"]),
        smtp_process=top["SMTP_PROCESS"],
        source=v.source,
        raw_providers=merged_raw,
    )
    return config, v.problems


def _provider(
    v: _Validator,
    name: str,
    values: Any,
    overrides: Mapping[str, Any] | None,
    override_source: str,
) -> tuple[ProviderConfig, dict[str, Any]] | None:
    if not v.typed(values, dict, "PROVIDERS", name):
        return None
    errors_before = sum(not p.warning for p in v.problems)
    v.unknown_keys(values, PROVIDER_DEFAULTS, "PROVIDERS", name)
    if overrides:
        for key in overrides:
            if key not in PROVIDER_DEFAULTS:
                v.error(
                    "E002",
                    f"{override_source}[{key.lower()!r}] is not a known option.",
                    "Options are the provider keys in lower case: "
                    + ", ".join(k.lower() for k in PROVIDER_DEFAULTS)
                    + ".",
                )
    user = {**values, **(overrides or {})}
    preset_name = user.get("PRESET")
    base: dict[str, Any] = {}
    if preset_name is not None:
        if preset_name not in PRESETS:
            v.error(
                "E011",
                f"{v.path('PROVIDERS', name, 'PRESET')} is {preset_name!r}, not a known preset.",
                (_did_you_mean(preset_name, list(PRESETS)) + " Presets: ").strip()
                + " "
                + ", ".join(sorted(PRESETS))
                + ".",
            )
        else:
            base = preset(preset_name, region=user.get("REGION"))
    merged = {**PROVIDER_DEFAULTS, **base, **user}
    p = lambda *k: ("PROVIDERS", name, *k)  # noqa: E731

    host = merged["HOST"]
    if host is None:
        v.error("E012", f"{v.path(*p('HOST'))} is required (or a PRESET that sets it).")
    else:
        v.typed(host, str, *p("HOST"))

    tls = merged["TLS"]
    tls_ok = v.choice(tls, TLS_MODES, *p("TLS"))
    port = merged["PORT"]
    if port is None and tls_ok:
        port = DEFAULT_PORTS[tls]
    elif v.typed(port, int, *p("PORT")) and not 0 < port < 65536:
        v.error("E003", f"{v.path(*p('PORT'))} must be between 1 and 65535, not {port}.")
    if tls_ok and isinstance(port, int):
        if tls == "implicit" and port in (25, 587):
            v.error(
                "E015",
                f"{v.path(*p('TLS'))} is 'implicit' but {v.path(*p('PORT'))} is {port}, "
                "a plain-text port that upgrades with STARTTLS.",
                "Use TLS 'starttls' on port 587, or port 465 for implicit TLS.",
            )
        elif tls in ("starttls", "opportunistic", "none") and port == 465:
            v.error(
                "E015",
                f"{v.path(*p('TLS'))} is {tls!r} but {v.path(*p('PORT'))} is 465, "
                "which expects TLS from the first byte.",
                "Use TLS 'implicit' on port 465, or port 587 for STARTTLS.",
            )
    preset_tls = base.get("TLS")
    if tls == "none" and preset_tls in ("implicit", "starttls"):
        v.error(
            "E016",
            f"{v.path(*p('TLS'))} is 'none' but preset {preset_name!r} requires TLS "
            f"({preset_tls!r}).",
            "Credentials and mail would cross the network in clear; remove the TLS override.",
        )

    disabled = merged["DISABLE_EXTENSIONS"]
    disabled_set: set[str] = set()
    if v.typed(disabled, (list, tuple), *p("DISABLE_EXTENSIONS")):
        for index, ext in enumerate(disabled):
            if not isinstance(ext, str) or ext.upper() not in KNOWN_EXTENSIONS:
                v.error(
                    "E013",
                    f"{v.path(*p('DISABLE_EXTENSIONS'), index)} is {ext!r}, not a known EHLO "
                    "extension.",
                    _did_you_mean(ext, sorted(KNOWN_EXTENSIONS)).strip()
                    or "Known: " + ", ".join(sorted(KNOWN_EXTENSIONS)) + ".",
                )
            else:
                disabled_set.add(ext.upper())
    if tls == "starttls" and "STARTTLS" in disabled_set:
        v.error(
            "E016",
            f"{v.path(*p('DISABLE_EXTENSIONS'))} disables STARTTLS but {v.path(*p('TLS'))} is "
            "'starttls', which requires it.",
            "Use TLS 'none' to send without encryption, or stop disabling STARTTLS.",
        )

    mechanisms = merged["AUTH_MECHANISMS"]
    mech_list: list[str] = []
    if v.typed(mechanisms, (list, tuple), *p("AUTH_MECHANISMS")):
        for index, mech in enumerate(mechanisms):
            if not isinstance(mech, str) or mech.upper() not in SUPPORTED_AUTH_MECHANISMS:
                v.error(
                    "E014",
                    f"{v.path(*p('AUTH_MECHANISMS'), index)} is {mech!r}, not a supported AUTH "
                    "mechanism.",
                    _did_you_mean(mech, SUPPORTED_AUTH_MECHANISMS).strip()
                    or "Supported: " + ", ".join(SUPPORTED_AUTH_MECHANISMS) + ".",
                )
            else:
                mech_list.append(mech.upper())

    username, password, token = merged["USERNAME"], merged["PASSWORD"], merged["OAUTH2_TOKEN"]
    for key, value in (("USERNAME", username), ("PASSWORD", password), ("OAUTH2_TOKEN", token)):
        if value is not None:
            v.typed(value, str, *p(key))
    if username and not password and not token:
        v.error(
            "E017",
            f"{v.path(*p('USERNAME'))} is set but neither {v.path(*p('PASSWORD'))} nor "
            f"{v.path(*p('OAUTH2_TOKEN'))} is.",
        )
    if (password or token) and not username:
        v.error(
            "E017",
            f"{v.path(*p('PASSWORD' if password else 'OAUTH2_TOKEN'))} is set but "
            f"{v.path(*p('USERNAME'))} is not.",
        )
    if "AUTH_MECHANISMS" in user and mechanisms and not username:
        v.error(
            "E017",
            f"{v.path(*p('AUTH_MECHANISMS'))} is set but no credentials are: "
            f"{v.path(*p('USERNAME'))} is missing.",
        )
    if token and isinstance(token, str):
        try:
            imported = import_string(token)
        except ImportError as exc:
            v.error("E017", f"{v.path(*p('OAUTH2_TOKEN'))} {token!r} cannot be imported: {exc}.")
        else:
            if not callable(imported):
                v.error("E017", f"{v.path(*p('OAUTH2_TOKEN'))} {token!r} is not callable.")
        if "XOAUTH2" not in mech_list:
            v.error(
                "E017",
                f"{v.path(*p('OAUTH2_TOKEN'))} is set but {v.path(*p('AUTH_MECHANISMS'))} does "
                "not include 'XOAUTH2'.",
            )
    if username and "AUTH" in disabled_set:
        v.error(
            "E017",
            f"{v.path(*p('DISABLE_EXTENSIONS'))} disables AUTH but credentials are configured.",
        )
    plaintext_ok = merged["ALLOW_PLAINTEXT_AUTH"]
    v.typed(plaintext_ok, bool, *p("ALLOW_PLAINTEXT_AUTH"))
    if username and tls in ("none", "opportunistic") and not plaintext_ok:
        v.warn(
            "W001",
            f"{v.path(*p('TLS'))} is {tls!r} and credentials are configured: they will not be "
            "sent without TLS, so delivery fails until TLS is available.",
            "Use TLS 'starttls' or 'implicit', or set ALLOW_PLAINTEXT_AUTH: True for a trusted "
            "local relay.",
        )

    ca_file = merged["CA_FILE"]
    if ca_file is not None and v.typed(ca_file, str, *p("CA_FILE")):
        if not os.path.isfile(ca_file):
            v.error("E023", f"{v.path(*p('CA_FILE'))} {ca_file!r} is not a readable file.")

    v.positive(merged["TIMEOUT"], *p("TIMEOUT"))
    for key in ("MAX_CONNECTIONS", "MAX_MESSAGES_PER_CONNECTION"):
        if v.typed(merged[key], int, *p(key)) and merged[key] < 1:
            v.error("E003", f"{v.path(*p(key))} must be at least 1, not {merged[key]}.")
    if merged["MAX_RECIPIENTS"] is not None and v.typed(
        merged["MAX_RECIPIENTS"], int, *p("MAX_RECIPIENTS")
    ):
        if merged["MAX_RECIPIENTS"] < 1:
            v.error("E003", f"{v.path(*p('MAX_RECIPIENTS'))} must be at least 1.")
    if merged["LOCAL_HOSTNAME"] is not None:
        v.typed(merged["LOCAL_HOSTNAME"], str, *p("LOCAL_HOSTNAME"))
    if merged["FALLBACK"] is not None:
        v.typed(merged["FALLBACK"], str, *p("FALLBACK"))

    rate = _rate_limit(v, merged["RATE_LIMIT"], p("RATE_LIMIT"))
    retry = _retry(v, merged["RETRY"], p("RETRY"))
    rules = _reply_rules(v, merged["REPLY_RULES"], p("REPLY_RULES"))

    if sum(not p_.warning for p_ in v.problems) > errors_before:
        return None
    config = ProviderConfig(
        name=name,
        host=host,
        port=port,
        tls=tls,
        preset=preset_name,
        ca_file=ca_file,
        username=username,
        password=password,
        oauth2_token=token,
        disable_extensions=frozenset(disabled_set),
        auth_mechanisms=tuple(mech_list),
        timeout=float(merged["TIMEOUT"]),
        local_hostname=merged["LOCAL_HOSTNAME"],
        allow_plaintext_auth=plaintext_ok,
        max_connections=merged["MAX_CONNECTIONS"],
        max_messages_per_connection=merged["MAX_MESSAGES_PER_CONNECTION"],
        max_recipients=merged["MAX_RECIPIENTS"],
        rate_limit=rate,
        retry=retry,
        reply_rules=rules,
        fallback=merged["FALLBACK"],
    )
    return config, merged


def _rate_limit(v: _Validator, value: Any, keys: tuple[Any, ...]) -> RateLimit | None:
    if value is None:
        return None
    match = RATE_RE.match(value) if isinstance(value, str) else None
    if not match or int(match.group(1)) < 1:
        v.error(
            "E018",
            f"{v.path(*keys)} is {value!r}; expected 'COUNT/UNIT' such as '60/m', '10/s', "
            "'2000/d' or '100/5m'.",
        )
        return None
    multiple = int(match.group(2) or 1)
    return RateLimit(int(match.group(1)), multiple * RATE_UNITS[match.group(3)])


def _retry(v: _Validator, value: Any, keys: tuple[Any, ...]) -> RetryPolicy:
    if not v.typed(value, dict, *keys):
        return RetryPolicy()
    for key in value:
        if key not in RETRY_DEFAULTS:
            v.error(
                "E019",
                f"{v.path(*keys, key)} is not a known retry setting.",
                "Known: " + ", ".join(RETRY_DEFAULTS) + ".",
            )
    merged = {**RETRY_DEFAULTS, **value}
    v.choice(merged["BACKOFF"], BACKOFFS, *keys, "BACKOFF")
    if v.typed(merged["MAX_ATTEMPTS"], int, *keys, "MAX_ATTEMPTS") and merged["MAX_ATTEMPTS"] < 1:
        v.error("E019", f"{v.path(*keys, 'MAX_ATTEMPTS')} must be at least 1.")
    for key in ("BASE_SECONDS", "MAX_SECONDS", "MAX_AGE_SECONDS"):
        v.positive(merged[key], *keys, key)
    if v.typed(merged["JITTER"], (int, float), *keys, "JITTER") and not 0 <= merged["JITTER"] <= 1:
        v.error("E019", f"{v.path(*keys, 'JITTER')} must be between 0 and 1.")
    try:
        return RetryPolicy(
            max_attempts=int(merged["MAX_ATTEMPTS"]),
            backoff=merged["BACKOFF"],
            base_seconds=float(merged["BASE_SECONDS"]),
            max_seconds=float(merged["MAX_SECONDS"]),
            max_age_seconds=float(merged["MAX_AGE_SECONDS"]),
            jitter=float(merged["JITTER"]),
        )
    except (TypeError, ValueError):
        return RetryPolicy()


def _reply_rules(v: _Validator, value: Any, keys: tuple[Any, ...]) -> tuple[ReplyRule, ...]:
    if not v.typed(value, (list, tuple), *keys):
        return ()
    rules = []
    for index, rule in enumerate(value):
        here = (*keys, index)
        if not v.typed(rule, dict, *here):
            continue
        bad = False
        for key in rule:
            if key not in RULE_KEYS:
                v.error(
                    "E020",
                    f"{v.path(*here, key)} is not a rule key.",
                    "Rule keys: " + ", ".join(RULE_KEYS) + ".",
                )
                bad = True
        if not any(k in rule for k in ("CODE", "ENHANCED", "TEXT")):
            v.error("E020", f"{v.path(*here)} needs at least one of CODE, ENHANCED or TEXT.")
            bad = True
        code = str(rule.get("CODE", ""))
        if code and not re.fullmatch(r"[245][0-9x][0-9x]", code.lower()):
            v.error(
                "E020",
                f"{v.path(*here, 'CODE')} is {rule['CODE']!r}; expected a reply "
                "code like 550 or a class like '4xx'.",
            )
            bad = True
        enhanced = rule.get("ENHANCED", "")
        if enhanced and not re.fullmatch(
            r"[245]\.\d{1,3}\.(\d{1,3})?|[245]\.(\d{1,3}\.)?", enhanced
        ):
            v.error(
                "E020",
                f"{v.path(*here, 'ENHANCED')} is {enhanced!r}; expected an "
                "enhanced status code like '5.4.5' or a prefix like '5.7.'.",
            )
            bad = True
        text = rule.get("TEXT", "")
        if text:
            try:
                re.compile(text)
            except re.error as exc:
                v.error(
                    "E020", f"{v.path(*here, 'TEXT')} is not a valid regular expression: {exc}."
                )
                bad = True
        outcome = rule.get("OUTCOME")
        if outcome not in RULE_OUTCOMES:
            v.error(
                "E020",
                f"{v.path(*here, 'OUTCOME')} is {outcome!r}; expected one of "
                + ", ".join(map(repr, RULE_OUTCOMES))
                + ".",
            )
            bad = True
        pause = rule.get("PAUSE_PROVIDER", False)
        if not isinstance(pause, bool):
            v.error("E020", f"{v.path(*here, 'PAUSE_PROVIDER')} must be True or False.")
            bad = True
        retry_after = rule.get("RETRY_AFTER")
        if retry_after is not None and not v.positive(retry_after, *here, "RETRY_AFTER"):
            bad = True
        if not bad:
            rules.append(
                ReplyRule(
                    verdict=RULE_OUTCOMES[outcome],
                    code=code,
                    enhanced=enhanced,
                    text=text,
                    retry_after_seconds=int(retry_after) if retry_after is not None else None,
                    description=str(rule.get("DESCRIPTION", "")),
                    pause_provider=pause is True,
                )
            )
    return tuple(rules)


def _raise_for(problems: list[Problem]) -> None:
    errors = [p for p in problems if not p.warning]
    if errors:
        lines = "\n".join(f"  {p.id}: {p}" for p in errors)
        raise ReliableMailConfigError(
            f"django-reliable-mail is misconfigured:\n{lines}", problems=errors
        )


@lru_cache(maxsize=1)
def get_config() -> Config:
    """The validated configuration; raises :class:`ReliableMailConfigError` when invalid."""
    config, problems = validate()
    _raise_for(problems)
    assert config is not None
    return config


def config_with_options(
    provider: str | None, options: Mapping[str, Any], *, alias: str | None
) -> tuple[Config, str]:
    """The configuration with backend keyword options applied to one provider."""
    base = get_config()
    name = provider or base.default_provider
    if not options:
        base.provider(name)
        return base, name
    base.provider(name)
    source = f"MAILERS[{alias!r}]['OPTIONS']" if alias else "EmailBackend options"
    raw = getattr(settings, SETTING, None)
    if raw is None:
        raw = {"DEFAULT_PROVIDER": "default", "PROVIDERS": {"default": _django_email_provider()}}
    config, problems = validate(
        raw,
        overrides=options_to_provider_keys(options),
        override_provider=name,
        override_source=source,
    )
    _raise_for(problems)
    assert config is not None
    return config, name


def config_for_mailer(alias: str) -> tuple[Config, str]:
    """The configuration a MAILERS entry's OPTIONS produce, as the worker must see it too."""
    entry = (getattr(settings, "MAILERS", None) or {}).get(alias)
    if entry is None:
        raise ReliableMailConfigError(
            f"MAILERS[{alias!r}] is gone, but queued messages were sent through it; "
            "restore it or move those messages to another provider."
        )
    options = {k: v for k, v in (entry.get("OPTIONS") or {}).items() if v is not None}
    provider = options.pop("provider", None)
    options.pop("fail_silently", None)
    return config_with_options(provider, options, alias=alias)


@receiver(setting_changed)
def _reset_on_setting_change(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING or setting.startswith("EMAIL_") or setting == "MAILERS":
        get_config.cache_clear()
