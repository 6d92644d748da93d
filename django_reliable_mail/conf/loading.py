"""The configuration as the rest of the app gets it: validated once, cached until a
setting changes, with backend options (``MAILERS`` OPTIONS) applied on request.

Invariant: an invalid configuration is never returned; it raises one
:class:`~django_reliable_mail.exceptions.ReliableMailConfigError` listing every error.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import django
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from ..exceptions import ReliableMailConfigError, TLSConflictError
from .report import Report
from .sources import TLS_CONFLICT_ID, options_to_provider_keys
from .validation import validate
from .values import SETTING, Config, Problem


def _raise_for(problems: list[Problem]) -> None:
    errors = [p for p in problems if not p.warning]
    if errors:
        lines = "\n".join(f"  {p.id}: {p}" for p in errors)
        # Both TLS flags on is a ValueError in Django too: code that expects that still works.
        conflict = any(p.id == f"reliable_mail.{TLS_CONFLICT_ID}" for p in errors)
        error = TLSConflictError if conflict else ReliableMailConfigError
        raise error(f"django-reliable-mail is misconfigured:\n{lines}", problems=errors)


@lru_cache(maxsize=1)
def get_config() -> Config:
    """The validated configuration; raises :class:`ReliableMailConfigError` when invalid."""
    config, problems = validate()
    _raise_for(problems)
    assert config is not None
    return config


def uses_mailer_defaults(alias: str | None) -> bool:
    """A Django 6.1 mailer without RELIABLE_MAIL: its OPTIONS alone describe the server."""
    return bool(alias) and django.VERSION >= (6, 1) and getattr(settings, SETTING, None) is None


def _mailer_base() -> Config:
    config, problems = validate(for_mailer=True)
    _raise_for(problems)
    assert config is not None
    return config


def config_with_options(
    provider: str | None, options: Mapping[str, Any], *, alias: str | None
) -> tuple[Config, str]:
    """The configuration with backend keyword options applied to one provider."""
    for_mailer = uses_mailer_defaults(alias)
    base = _mailer_base() if for_mailer else get_config()
    name = provider or base.default_provider
    base.provider(name)
    if not options:
        return base, name
    source = f"MAILERS[{alias!r}]['OPTIONS']" if alias else "EmailBackend options"
    report = Report()
    overrides = options_to_provider_keys(options, base=base.provider(name), report=report)
    config, problems = validate(
        overrides=overrides,
        override_provider=name,
        override_source=source,
        for_mailer=for_mailer,
    )
    _raise_for(report.problems + problems)
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
