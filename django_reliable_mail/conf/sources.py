"""Where raw provider values come from besides ``RELIABLE_MAIL``: Django's ``EMAIL_*``
settings (the drop-in fallback) and backend keyword options (``MAILERS`` OPTIONS).

Invariant: nothing here checks a value; everything read here goes through the settings
table like the values of ``RELIABLE_MAIL`` do.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from django.conf import settings

from .reading import Layer
from .report import Path, Report
from .tables import PROVIDER
from .values import SETTING
from .wording import did_you_mean

#: Django SMTP backend option names accepted as backend keyword options.
DJANGO_OPTION_ALIASES = {"use_tls", "use_ssl"}
DJANGO_SOURCE = "Django's EMAIL_* settings → " + SETTING


def django_email_settings() -> dict[str, Any]:
    """``RELIABLE_MAIL`` as Django's EMAIL_* settings describe it: one provider, sent inline."""
    return {"DEFAULT_PROVIDER": "default", "PROVIDERS": {"default": django_email_provider()}}


def django_email_provider() -> dict[str, Any]:
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


def options_layer(overrides: Mapping[Any, object], source: str, report: Report) -> Layer:
    """Backend options as the top layer of one provider; unknown ones are reported."""
    root = Path(source)
    known = {key.lower() for key in PROVIDER.keys}
    values: dict[str, object] = {}
    paths: dict[str, Path] = {}
    for key, value in overrides.items():
        if isinstance(key, str) and key in PROVIDER.keys:
            values[key], paths[key] = value, root / key.lower()
            continue
        name = key.lower() if isinstance(key, str) else key
        report.error(
            "E002",
            f"{root / name} is not a known option.",
            did_you_mean(name, sorted(known))
            or "Options are the provider keys in lower case: "
            + ", ".join(k.lower() for k in PROVIDER.keys)
            + ".",
        )
    return Layer(values, paths)
