"""Where raw provider values come from besides ``RELIABLE_MAIL``: Django's ``EMAIL_*``
settings (the drop-in path) and backend keyword options (``get_connection(**kwargs)``,
``send_mail(auth_user=…)``, a ``MAILERS`` entry's OPTIONS).

Both follow Django's SMTP backend where it is safe: an argument that is not ``None``
overrides the setting (``use_tls=False`` included), ``EMAIL_USE_TLS`` and ``EMAIL_USE_SSL``
together are an error (a ``ValueError``, as in Django), and a user name without a password
(or the reverse) means no AUTH. Every value read from Django's settings is read at the path
of the Django setting it came from, so each problem names that setting.

Invariant: nothing here checks a value's type or range; everything read here goes through
the settings table like the values of ``RELIABLE_MAIL`` do.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from .reading import Layer
from .report import Path, Report
from .tables import PROVIDER
from .values import SETTING
from .wording import did_you_mean

#: Django's SMTP backend arguments (besides the provider keys in lower case) and the
#: provider key each one sets (TLS comes from both flags together).
DJANGO_ARGUMENTS = {
    "host": "HOST",
    "port": "PORT",
    "username": "USERNAME",
    "password": "PASSWORD",
    "timeout": "TIMEOUT",
    "use_tls": "TLS",
    "use_ssl": "TLS",
    "ssl_certfile": "CLIENT_CERTFILE",
    "ssl_keyfile": "CLIENT_KEYFILE",
}
DJANGO_OPTION_ALIASES = set(DJANGO_ARGUMENTS)
#: The arguments whose value is a secret: never stored with a message.
SECRET_ARGUMENTS = frozenset({"password", "oauth2_token"})
DJANGO_SOURCE = "Django's EMAIL_* settings"
#: Django's own wording, which its callers may match (``assertRaisesMessage``).
TLS_CONFLICT = (
    "EMAIL_USE_TLS/EMAIL_USE_SSL are mutually exclusive, so only set one of those settings to True."
)
TLS_CONFLICT_ID = "E024"
_TLS_HINT = "EMAIL_USE_SSL is implicit TLS (port 465); EMAIL_USE_TLS is STARTTLS (port 587)."

#: Provider key → the Django setting it is read from.
_SETTING_OF = {
    "HOST": "EMAIL_HOST",
    "PORT": "EMAIL_PORT",
    "USERNAME": "EMAIL_HOST_USER",
    "PASSWORD": "EMAIL_HOST_PASSWORD",
    "TIMEOUT": "EMAIL_TIMEOUT",
    "CLIENT_CERTFILE": "EMAIL_SSL_CERTFILE",
    "CLIENT_KEYFILE": "EMAIL_SSL_KEYFILE",
}


@dataclass(frozen=True)
class DjangoSource:
    """``RELIABLE_MAIL`` as Django's settings describe it, and where each value came from."""

    settings: dict[str, Any]
    #: Provider key → the path of the Django setting it was read from.
    paths: dict[str, Path] = field(default_factory=dict)

    def provider_layer(self) -> Layer:
        values = self.settings["PROVIDERS"]["default"]
        root = Path(DJANGO_SOURCE)
        return Layer(values, {key: self.paths.get(key, root / key) for key in values})


def django_email_source(report: Report, *, for_mailer: bool = False) -> DjangoSource:
    """One provider named ``default`` from the ``EMAIL_*`` settings, first attempts sent in
    the calling process (``MODE`` ``immediate``), as Django's SMTP backend sends.

    ``for_mailer``: a Django 6.1 mailer (a backend built with an alias) ignores the
    ``EMAIL_*`` settings, as Django's does; its OPTIONS give the host, and the port follows
    the TLS mode (465, 587, else 25)."""
    if for_mailer:
        provider, paths = {"HOST": "localhost", "TLS": "none"}, {}
    else:
        provider, paths = _django_email_provider(report)
    values = {"DEFAULT_PROVIDER": "default", "PROVIDERS": {"default": provider}}
    return DjangoSource({**values, "MODE": "immediate"}, paths)


def _django_email_provider(report: Report) -> tuple[dict[str, Any], dict[str, Path]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EMAIL_* are deprecated on 6.1, still honoured
        if hasattr(settings, "MAILERS"):
            # EMAIL_* settings cannot coexist with MAILERS (Django 6.1): OPTIONS say the rest.
            return {"HOST": "localhost", "TLS": "none"}, {}
        read = {key: getattr(settings, name, None) for key, name in _SETTING_OF.items()}
        use_ssl = bool(getattr(settings, "EMAIL_USE_SSL", False))
        use_tls = bool(getattr(settings, "EMAIL_USE_TLS", False))
    paths = {key: Path(name) for key, name in _SETTING_OF.items()}
    paths["TLS"] = Path("EMAIL_USE_SSL" if use_ssl else "EMAIL_USE_TLS")
    if use_ssl and use_tls:
        report.error(
            TLS_CONFLICT_ID,
            f"EMAIL_USE_TLS and EMAIL_USE_SSL are both True: {TLS_CONFLICT}",
            _TLS_HINT,
        )
    values: dict[str, Any] = {
        "HOST": read["HOST"] if read["HOST"] is not None else "localhost",
        "PORT": read["PORT"] if read["PORT"] is not None else 25,
        "TLS": "implicit" if use_ssl else "starttls" if use_tls else "none",
    }
    for key in ("TIMEOUT", "CLIENT_CERTFILE", "CLIENT_KEYFILE"):
        if read[key] is not None:
            values[key] = read[key]
    username, password = read["USERNAME"] or None, read["PASSWORD"] or None
    if bool(username) != bool(password):
        given, missing = (
            ("EMAIL_HOST_USER", "EMAIL_HOST_PASSWORD")
            if username
            else ("EMAIL_HOST_PASSWORD", "EMAIL_HOST_USER")
        )
        report.warn(
            "W002",
            f"{given} is set but {missing} is not: no AUTH is attempted, as with Django's "
            "SMTP backend.",
            f"Set {missing} too to authenticate, or remove {given}.",
        )
    elif username:
        values["USERNAME"], values["PASSWORD"] = username, password
    return values, paths


@dataclass(frozen=True)
class Overrides:
    """Backend keyword options as provider keys, and the option each key came from."""

    keys: dict[str, Any]
    #: Provider key → the option name it was given as (``use_tls`` for TLS …).
    names: dict[str, str]


def options_to_provider_keys(
    options: Mapping[str, Any], *, base: Any = None, report: Report | None = None
) -> Overrides:
    """Backend keyword options (lower case; ``None`` already left out) → provider keys.

    ``base`` is the provider the options apply to (a :class:`~.values.ProviderConfig`):
    Django's flags override its TLS mode one at a time, and credentials replace its own
    as a pair, as Django's backend reads them.
    """
    keys: dict[str, Any] = {}
    names: dict[str, str] = {}
    for name, value in options.items():
        if name in ("use_tls", "use_ssl", "username", "password"):
            continue
        key = DJANGO_ARGUMENTS.get(name, name.upper() if isinstance(name, str) else name)
        keys[key], names[key] = value, name
    _tls_from_flags(options, base=base, keys=keys, names=names, report=report)
    _credentials(options, base=base, keys=keys, names=names)
    return Overrides(keys, names)


def _tls_from_flags(
    options: Mapping[str, Any],
    *,
    base: Any,
    keys: dict[str, Any],
    names: dict[str, str],
    report: Report | None,
) -> None:
    if "use_tls" not in options and "use_ssl" not in options:
        return
    base_tls = getattr(base, "tls", "none")
    use_ssl = bool(options.get("use_ssl", base_tls == "implicit"))
    use_tls = bool(options.get("use_tls", base_tls == "starttls"))
    names["TLS"] = "use_ssl" if "use_ssl" in options else "use_tls"
    if use_ssl and use_tls:
        if report is not None:
            given = " and ".join(n for n in ("use_tls", "use_ssl") if n in options)
            report.error(
                TLS_CONFLICT_ID, f"{given} make TLS and SSL both on: {TLS_CONFLICT}", _TLS_HINT
            )
        keys["TLS"] = base_tls
    elif use_ssl:
        keys["TLS"] = "implicit"
    elif use_tls:
        keys["TLS"] = "starttls"
    elif base_tls == "opportunistic" and "use_tls" not in options:
        keys["TLS"] = base_tls  # use_ssl=False alone says nothing about STARTTLS
    else:
        keys["TLS"] = "none"


def _credentials(
    options: Mapping[str, Any], *, base: Any, keys: dict[str, Any], names: dict[str, str]
) -> None:
    """Django authenticates only when both a user name and a password are set: ``""`` for
    either (``get_connection(username="", password="")``) means no AUTH."""
    if "username" not in options and "password" not in options:
        return
    username = options.get("username", getattr(base, "username", None))
    password = options.get("password", getattr(base, "password", None))
    token = getattr(base, "oauth2_token", None) if "password" not in options else None
    names["USERNAME"] = "username" if "username" in options else "password"
    names["PASSWORD"] = "password" if "password" in options else "username"
    if username and (password or token):
        keys["USERNAME"] = username
        if "password" in options:
            keys["PASSWORD"] = password
    else:
        keys["USERNAME"] = keys["PASSWORD"] = keys["OAUTH2_TOKEN"] = None
        names["OAUTH2_TOKEN"] = names["USERNAME"]


def options_layer(overrides: Overrides, source: str, report: Report) -> Layer:
    """Backend options as the top layer of one provider; unknown ones are reported."""
    root = Path(source)
    known = {key.lower() for key in PROVIDER.keys} | DJANGO_OPTION_ALIASES
    values: dict[str, object] = {}
    paths: dict[str, Path] = {}
    for key, value in overrides.keys.items():
        if isinstance(key, str) and key in PROVIDER.keys:
            name = overrides.names.get(key, key.lower())
            values[key], paths[key] = value, root / name
            continue
        name = key.lower() if isinstance(key, str) else key
        report.error(
            "E002",
            f"{root / name} is not a known option.",
            did_you_mean(name, sorted(known))
            or "Options are Django's SMTP backend arguments ("
            + ", ".join(sorted(DJANGO_OPTION_ALIASES))
            + ") and the provider keys in lower case: "
            + ", ".join(k.lower() for k in PROVIDER.keys)
            + ".",
        )
    return Layer(values, paths)


__all__ = [
    "DJANGO_ARGUMENTS",
    "DJANGO_OPTION_ALIASES",
    "DJANGO_SOURCE",
    "SECRET_ARGUMENTS",
    "SETTING",
    "TLS_CONFLICT",
    "DjangoSource",
    "Overrides",
    "django_email_source",
    "options_layer",
    "options_to_provider_keys",
]
