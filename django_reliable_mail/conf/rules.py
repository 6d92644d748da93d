"""Cross-field rules: what no single key can be checked for alone.

Each rule is a small named function over values the table has already read. A provider
rule is listed with the keys it needs: it runs only when all of them passed their own
checks, so one mistake is reported once. Rules never show a secret: they name keys, not
values, for credentials.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import cast

from .reading import INVALID, Readings
from .report import Report
from .wording import did_you_mean, one_of, shown


@dataclass(frozen=True)
class ProviderDraft:
    """One provider's readings, with what its rules need to know around it."""

    name: str
    readings: Readings
    #: The preset's own values ({} without a PRESET).
    preset: Mapping[str, object]
    #: Every provider name in PROVIDERS.
    names: Collection[str]
    #: Read from Django's EMAIL_* settings (or a mailer's defaults), where Django's
    #: backend would try what it is told: a doubtful combination is only a warning there.
    from_django: bool = False


@dataclass(frozen=True)
class ProviderRule:
    #: The keys the rule reads; it is skipped when one of them is invalid.
    needs: tuple[str, ...]
    check: Callable[[ProviderDraft, Report], None]

    def apply(self, draft: ProviderDraft, report: Report) -> None:
        if draft.readings.valid(*self.needs):
            self.check(draft, report)


def host_is_set(draft: ProviderDraft, report: Report) -> None:
    r = draft.readings
    if r["HOST"] is None:
        report.error("E012", f"{r.path('HOST')} is required (or a PRESET that sets it).")


def tls_matches_port(draft: ProviderDraft, report: Report) -> None:
    r = draft.readings
    tls, port = r["TLS"], r["PORT"]
    # Django's backend builds with any port (it fails when it connects): so do we, warned.
    problem = report.warn if draft.from_django else report.error
    if tls == "implicit" and port in (25, 587):
        problem(
            "E015" if not draft.from_django else "W004",
            f"{r.path('TLS')} is 'implicit' but {r.path('PORT')} is {port}, "
            "a plain-text port that upgrades with STARTTLS.",
            "Use TLS 'starttls' on port 587, or port 465 for implicit TLS.",
        )
    elif tls != "implicit" and port == 465:
        problem(
            "E015" if not draft.from_django else "W004",
            f"{r.path('TLS')} is {tls!r} but {r.path('PORT')} is 465, "
            "which expects TLS from the first byte.",
            "Use TLS 'implicit' on port 465, or port 587 for STARTTLS.",
        )


def preset_tls_is_kept(draft: ProviderDraft, report: Report) -> None:
    r = draft.readings
    required = draft.preset.get("TLS")
    if r["TLS"] == "none" and required in ("implicit", "starttls"):
        report.error(
            "E016",
            f"{r.path('TLS')} is 'none' but preset {r['PRESET']!r} requires TLS ({required!r}).",
            "Credentials and mail would cross the network in clear; remove the TLS override.",
        )


def starttls_is_not_disabled(draft: ProviderDraft, report: Report) -> None:
    r = draft.readings
    disabled = cast(frozenset[str], r["DISABLE_EXTENSIONS"])
    if r["TLS"] == "starttls" and "STARTTLS" in disabled:
        report.error(
            "E016",
            f"{r.path('DISABLE_EXTENSIONS')} disables STARTTLS but {r.path('TLS')} is "
            "'starttls', which requires it.",
            "Use TLS 'none' to send without encryption, or stop disabling STARTTLS.",
        )


def credentials_come_in_pairs(draft: ProviderDraft, report: Report) -> None:
    r = draft.readings
    username, password, token = r["USERNAME"], r["PASSWORD"], r["OAUTH2_TOKEN"]
    if username and not password and not token:
        report.error(
            "E017",
            f"{r.path('USERNAME')} is set but neither {r.path('PASSWORD')} nor "
            f"{r.path('OAUTH2_TOKEN')} is.",
        )
    if (password or token) and not username:
        secret = "PASSWORD" if password else "OAUTH2_TOKEN"
        report.error("E017", f"{r.path(secret)} is set but {r.path('USERNAME')} is not.")


def mechanisms_need_credentials(draft: ProviderDraft, report: Report) -> None:
    r = draft.readings
    given = "AUTH_MECHANISMS" in r.given
    if given and r["AUTH_MECHANISMS"] and not r["USERNAME"]:
        report.error(
            "E017",
            f"{r.path('AUTH_MECHANISMS')} is set but no credentials are: "
            f"{r.path('USERNAME')} is missing.",
        )


def token_needs_xoauth2(draft: ProviderDraft, report: Report) -> None:
    r = draft.readings
    mechanisms = cast(tuple[str, ...], r["AUTH_MECHANISMS"])
    if r["OAUTH2_TOKEN"] and "XOAUTH2" not in mechanisms:
        report.error(
            "E017",
            f"{r.path('OAUTH2_TOKEN')} is set but {r.path('AUTH_MECHANISMS')} does not "
            "include 'XOAUTH2'.",
        )


def auth_is_not_disabled(draft: ProviderDraft, report: Report) -> None:
    r = draft.readings
    if r["USERNAME"] and "AUTH" in cast(frozenset[str], r["DISABLE_EXTENSIONS"]):
        report.error(
            "E017",
            f"{r.path('DISABLE_EXTENSIONS')} disables AUTH but credentials are configured.",
        )


def credentials_are_not_sent_in_clear(draft: ProviderDraft, report: Report) -> None:
    r = draft.readings
    tls = r["TLS"]
    if r["USERNAME"] and tls in ("none", "opportunistic") and not r["ALLOW_PLAINTEXT_AUTH"]:
        from_django = r.path("TLS").root.startswith("EMAIL_")
        report.warn(
            "W001",
            f"{r.path('TLS')} is {tls!r} and credentials are configured: they will not be "
            "sent without TLS, so delivery fails until TLS is available.",
            "Set EMAIL_USE_TLS (STARTTLS) or EMAIL_USE_SSL; unlike Django's SMTP backend, "
            "credentials are never sent in clear (a RELIABLE_MAIL provider with "
            "ALLOW_PLAINTEXT_AUTH: True permits it for a trusted local relay)."
            if from_django
            else "Use TLS 'starttls' or 'implicit', or set ALLOW_PLAINTEXT_AUTH: True for a "
            "trusted local relay.",
        )


def client_certificate_is_readable(draft: ProviderDraft, report: Report) -> None:
    """Read when a connection is made (as Django does, so building a backend never fails on
    it); a file that is not there now is worth a warning."""
    r = draft.readings
    for key in ("CLIENT_CERTFILE", "CLIENT_KEYFILE"):
        path = r[key]
        if isinstance(path, str) and path and not os.path.isfile(path):
            report.warn(
                "W003",
                f"{r.path(key)} is {shown(path)}, which is not a readable file: TLS connections "
                "will fail with a configuration error.",
                "Give the path of a PEM file (certificate, or certificate and key).",
            )


def fallback_is_another_provider(draft: ProviderDraft, report: Report) -> None:
    r = draft.readings
    fallback = r["FALLBACK"]
    if fallback is None:
        return
    if fallback not in draft.names:
        report.error(
            "E021",
            f"{r.path('FALLBACK')} is {shown(fallback)}, which is not a configured provider.",
            did_you_mean(fallback, sorted(draft.names)),
        )
    elif fallback == draft.name:
        report.error("E021", f"{r.path('FALLBACK')} names the provider itself.")


PROVIDER_RULES: tuple[ProviderRule, ...] = (
    ProviderRule(("HOST",), host_is_set),
    ProviderRule(("TLS", "PORT"), tls_matches_port),
    ProviderRule(("TLS",), preset_tls_is_kept),
    ProviderRule(("TLS", "DISABLE_EXTENSIONS"), starttls_is_not_disabled),
    ProviderRule(("USERNAME", "PASSWORD", "OAUTH2_TOKEN"), credentials_come_in_pairs),
    ProviderRule(("USERNAME", "AUTH_MECHANISMS"), mechanisms_need_credentials),
    ProviderRule(("OAUTH2_TOKEN", "AUTH_MECHANISMS"), token_needs_xoauth2),
    ProviderRule(("USERNAME", "DISABLE_EXTENSIONS"), auth_is_not_disabled),
    ProviderRule(("USERNAME", "TLS", "ALLOW_PLAINTEXT_AUTH"), credentials_are_not_sent_in_clear),
    ProviderRule(("FALLBACK",), fallback_is_another_provider),
    ProviderRule(("CLIENT_CERTFILE", "CLIENT_KEYFILE"), client_certificate_is_readable),
)


def default_provider(top: Readings, names: Collection[str], report: Report) -> str | None:
    """DEFAULT_PROVIDER, or the only provider; reports when neither names one."""
    default = top["DEFAULT_PROVIDER"]
    if default is INVALID:
        return None
    if default is None:
        if len(names) == 1:
            return next(iter(names))
        if names:
            report.error(
                "E005",
                f"{top.path('DEFAULT_PROVIDER')} is required when several providers are defined.",
                f"Choose one of {one_of(names)}.",
            )
        return None
    if default not in names:
        report.error(
            "E005",
            f"{top.path('DEFAULT_PROVIDER')} is {shown(default)}, which is not in "
            f"{top.path('PROVIDERS')}.",
            did_you_mean(default, sorted(names)),
        )
        return None
    return str(default)


def routes_lead_to_providers(top: Readings, names: Collection[str], report: Report) -> None:
    routes = top["ROUTES"]
    if not isinstance(routes, dict) or not names:
        return
    for domain, target in routes.items():
        if target not in names:
            report.error(
                "E022",
                f"{top.path('ROUTES') / domain} is {shown(target)}, which is not a configured "
                "provider.",
                did_you_mean(target, sorted(names)),
            )


def rule_has_a_condition(rule: Readings, report: Report) -> None:
    """A reply rule with no condition would match every reply; empty ones do not count."""
    conditions = ("CODE", "ENHANCED", "TEXT")
    if not rule.valid(*conditions) or any(rule[key] for key in conditions):
        return
    given = [key for key in conditions if key in rule.given]
    report.error(
        "E020",
        f"{rule.home} needs at least one of CODE, ENHANCED or TEXT.",
        f"Empty values count as absent: {', '.join(given)}." if given else "",
    )
