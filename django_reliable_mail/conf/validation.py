"""``validate()``: raw settings in, a frozen :class:`~.values.Config` and the problems out.

Precedence for a provider's values: backend keyword options → ``PROVIDERS[name]`` → the
provider's ``PRESET`` → the table's defaults. Invariant: ``validate`` never raises, whatever
the settings hold; every problem names the key path it is about, and a config is returned
only when there is no error (warnings may remain).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, cast

from django.conf import settings

from ..providers import preset
from .reading import Layer, Readings, read_table, report_unknown_keys
from .report import Path, Report
from .rules import PROVIDER_RULES, ProviderDraft, default_provider, routes_lead_to_providers
from .sources import DJANGO_SOURCE, DjangoSource, Overrides, django_email_source, options_layer
from .tables import DEFAULT_PORTS, PRESET_FIELDS, PROVIDER, SERVER_FIELDS, TOP_LEVEL
from .values import SETTING, Config, Problem, ProviderConfig
from .wording import shown, type_name


def validate(
    raw: Any = None,
    *,
    overrides: Overrides | Mapping[str, Any] | None = None,
    override_provider: str | None = None,
    override_source: str = "OPTIONS",
    for_mailer: bool = False,
) -> tuple[Config | None, list[Problem]]:
    """Validate ``RELIABLE_MAIL`` (read from settings when ``raw`` is None; without it,
    Django's ``EMAIL_*`` settings, or with ``for_mailer`` a Django 6.1 mailer's defaults).

    ``overrides`` are provider keys applied on top of ``override_provider`` (backend options).
    """
    source = SETTING
    report = Report()
    django_source: DjangoSource | None = None
    if raw is None:
        raw = getattr(settings, SETTING, None)
    if raw is None:
        django_source = django_email_source(report, for_mailer=for_mailer)
        raw, source = django_source.settings, DJANGO_SOURCE
    if not isinstance(raw, Mapping):
        report.error("E001", f"{SETTING} must be a dict, not {type_name(raw)}.")
        return None, report.problems
    root = Path(source)
    report_unknown_keys(TOP_LEVEL, raw, root, report)
    top = read_table(TOP_LEVEL, [Layer.of(raw, root)], home=root, report=report)
    entries = top["PROVIDERS"] if isinstance(top["PROVIDERS"], dict) else {}
    if not isinstance(overrides, Overrides):
        overrides = Overrides(dict(overrides or {}), {})
    options = options_layer(overrides, override_source, report)
    providers: dict[str, ProviderConfig] = {}
    raw_providers: dict[str, dict[str, object]] = {}
    for name, values in entries.items():
        read = read_provider(
            name,
            values,
            at=top.path("PROVIDERS") / name,
            options=options if name == override_provider else None,
            names=entries.keys(),
            report=report,
            given=django_source.provider_layer() if django_source else None,
        )
        if read is not None:
            providers[name], raw_providers[name] = read
    default = default_provider(top, entries.keys(), report)
    routes_lead_to_providers(top, entries.keys(), report)
    if report.error_count or default is None:
        return None, report.problems
    routes = cast(dict[str, str], top["ROUTES"])  # a dict: it passed its check
    config = Config(
        providers=providers,
        default_provider=default,
        routes={domain.lower(): target for domain, target in routes.items()},
        source=source,
        raw_providers=raw_providers,
        **top.arguments(TOP_LEVEL),
    )
    return config, report.problems


def read_provider(
    name: str,
    values: object,
    *,
    at: Path,
    options: Layer | None,
    names: Collection[str],
    report: Report,
    given: Layer | None = None,
) -> tuple[ProviderConfig, dict[str, object]] | None:
    """One provider through the table and its rules; None when it has errors.

    ``given``: the provider's values with the paths they were read from, where those are
    not keys of ``RELIABLE_MAIL`` (Django's ``EMAIL_*`` settings)."""
    if not isinstance(values, Mapping):
        report.error("E003", f"{at} must be a dict, not {shown(values)}.")
        return None
    errors = report.error_count
    report_unknown_keys(PROVIDER, values, at, report)
    own = given or Layer.of(values, at)
    layers = [own] if options is None else [options, own]
    head = read_table(PRESET_FIELDS, layers, home=at, report=report)
    preset_values = _preset_values(head)
    layers.append(Layer.of(preset_values, at, given=False))
    readings = head.merged(read_table(SERVER_FIELDS, layers, home=at, report=report))
    if readings["PORT"] is None and readings.valid("TLS"):
        readings.values["PORT"] = DEFAULT_PORTS[str(readings["TLS"])]
    draft = ProviderDraft(name, readings, preset_values, names, from_django=given is not None)
    for rule in PROVIDER_RULES:
        rule.apply(draft, report)
    if report.error_count > errors:
        return None
    return ProviderConfig(name=name, **readings.arguments(PROVIDER)), readings.raw


def _preset_values(head: Readings) -> dict[str, object]:
    """The preset's values, its host filled in for REGION; {} without a usable PRESET."""
    name, region = head["PRESET"], head["REGION"]
    if not isinstance(name, str):
        return {}
    return preset(name, region=region if isinstance(region, str) else None)
