"""The kinds of value a setting can hold, each a check that reads one value.

Every check returns the parsed value (the type the frozen config stores) or reports
through its :class:`~.reading.Spot` and returns :data:`~.reading.INVALID`. Invariant: no
check raises, whatever it is given; ``bool`` is never taken for a number (a port of
``True`` is a mistake); NaN and infinities are never taken for a number either.
"""

from __future__ import annotations

import importlib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from .reading import INVALID, Layer, Readings, Spot, Table, read_table, report_unknown_keys
from .report import Report
from .values import RateLimit
from .wording import did_you_mean, one_of, shown

#: The longest duration a setting may hold: far beyond any sensible value, and small
#: enough that "now + duration" (twice that, with jitter) stays a valid datetime.
LONGEST_SECONDS = 3650 * 86400
RATE_RE = re.compile(r"\s*([0-9]{1,12})\s*/\s*([0-9]{0,12})\s*([smhd])\s*", re.ASCII)
RATE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MOST_PER_PERIOD = 1_000_000
_RATE_EXAMPLES = "expected 'COUNT/UNIT' such as '60/m', '10/s', '2000/d' or '100/5m'"


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Integer:
    low: int
    high: int

    def read(self, value: object, spot: Spot) -> object:
        if not _is_integer(value):
            return spot.wrong_type("an integer", value)
        assert isinstance(value, int)
        if not self.low <= value <= self.high:
            return spot.wrong(f"must be between {self.low} and {self.high}, not {shown(value)}.")
        return value


@dataclass(frozen=True)
class Seconds:
    """A positive, finite duration, at most :data:`LONGEST_SECONDS`; read as a float."""

    def read(self, value: object, spot: Spot) -> object:
        if not _is_number(value):
            return spot.wrong_type("an integer or a number", value)
        assert isinstance(value, int | float)
        if isinstance(value, float) and not math.isfinite(value):
            return spot.wrong(f"must be a finite number, not {shown(value)}.")
        if value <= 0:
            return spot.wrong(f"must be a positive number, not {shown(value)}.")
        if value > LONGEST_SECONDS:
            return spot.wrong(f"must be at most {LONGEST_SECONDS} (ten years), not {shown(value)}.")
        return float(value)


@dataclass(frozen=True)
class Fraction:
    """A number from 0 to 1."""

    def read(self, value: object, spot: Spot) -> object:
        if not _is_number(value):
            return spot.wrong_type("an integer or a number", value)
        assert isinstance(value, int | float)
        if not 0 <= value <= 1:  # False for NaN too
            return spot.wrong(f"must be between 0 and 1, not {shown(value)}.")
        return float(value)


@dataclass(frozen=True)
class Flag:
    def read(self, value: object, spot: Spot) -> object:
        if not isinstance(value, bool):
            return spot.wrong(f"must be True or False, not {spot.show(value)}.")
        return value


@dataclass(frozen=True)
class Choice:
    """One of a few strings. With a ``noun``, the hint lists them all."""

    choices: tuple[str, ...]
    noun: str = ""

    def read(self, value: object, spot: Spot) -> object:
        if isinstance(value, str) and value in self.choices:
            return value
        hint = did_you_mean(value, self.choices)
        if not self.noun:
            return spot.wrong(f"is {shown(value)}; expected one of {one_of(self.choices)}.", hint)
        every = f"{self.noun.capitalize()}s: {', '.join(sorted(self.choices))}."
        return spot.wrong(f"is {shown(value)}, not a known {self.noun}.", f"{hint} {every}".strip())


@dataclass(frozen=True)
class Text:
    """Any string; with a ``pattern``, one that matches it whole (``expected`` says how)."""

    pattern: re.Pattern[str] | None = None
    expected: str = ""

    def read(self, value: object, spot: Spot) -> object:
        if not isinstance(value, str):
            return spot.wrong_type("a string", value)
        if self.pattern is not None and not self.pattern.fullmatch(value):
            return spot.wrong(f"is {spot.show(value)}; expected {self.expected}.")
        return value


@dataclass(frozen=True)
class Host:
    """An SMTP server's name or IP address: no scheme, no port, no brackets, no spaces."""

    def read(self, value: object, spot: Spot) -> object:
        if not isinstance(value, str):
            return spot.wrong_type("a string", value)
        problem = host_problem(value)
        if problem is not None:
            return spot.wrong(f"is {shown(value)}, {problem[0]}", problem[1])
        return value


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<name>[^:\[\]]+)):(?P<port>[0-9]*)")
_LONGEST_HOST = 253  # RFC 1035 §2.3.4, in its dotted text form


def host_problem(host: str) -> tuple[str, str] | None:
    """What is wrong with ``host`` as HOST (message tail, hint), or None."""
    if not host.strip():
        return "which is empty.", "Set the SMTP server's name, e.g. 'smtp.example.com'."
    if _SCHEME.match(host):
        return "a URL, not a host name.", "Give the server's name alone; TLS and PORT say how."
    if any(c.isspace() or not c.isprintable() for c in host):
        return "which contains spaces or control characters.", ""
    with_port = _HOST_PORT.fullmatch(host)
    if with_port:
        name = with_port["v6"] or with_port["name"]
        port = with_port["port"] or "587"
        return "which includes a port.", f"Put the port in PORT: HOST {shown(name)}, PORT {port}."
    if host.startswith("["):
        return "in brackets.", "Write an IPv6 address without brackets, e.g. '2001:db8::25'."
    if ":" in host and not _is_ipv6(host):
        return "neither a host name nor an IPv6 address.", ""
    if "/" in host or "@" in host:
        return "not a host name.", "Give the server's name alone, e.g. 'smtp.example.com'."
    if len(host) > _LONGEST_HOST:
        return f"longer than a host name can be ({_LONGEST_HOST} characters).", ""
    return None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Keyword:
    """One item of a list of keywords (EHLO extensions, AUTH mechanisms), any case."""

    known: Collection[str]
    noun: str
    label: str
    #: The order the hint lists them in.
    listed: tuple[str, ...] = ()

    def read(self, value: object, spot: Spot) -> object:
        if isinstance(value, str) and value.upper() in self.known:
            return value.upper()
        listed = self.listed or tuple(sorted(self.known))
        hint = did_you_mean(value, listed) or f"{self.label}: {', '.join(listed)}."
        return spot.wrong(f"is {shown(value)}, not {self.noun}.", hint)


@dataclass(frozen=True)
class ListOf:
    """A list (or tuple) whose every item passes ``item``; read into ``into``."""

    item: Keyword | Nested
    into: Callable[[list[object]], object] = tuple

    def read(self, value: object, spot: Spot) -> object:
        if not isinstance(value, list | tuple):
            return spot.wrong_type("a list", value)
        items = [self.item.read(entry, spot.at(index)) for index, entry in enumerate(value)]
        if any(item is INVALID for item in items):
            return INVALID
        return self.into(items)


@dataclass(frozen=True)
class Rate:
    """``"60/m"``, ``"100/5m"``: a count per period, neither of them zero."""

    def read(self, value: object, spot: Spot) -> object:
        match = RATE_RE.fullmatch(value) if isinstance(value, str) else None
        if match is None or int(match[1]) < 1:
            return spot.wrong(f"is {shown(value)}; {_RATE_EXAMPLES}.")
        count, multiple = int(match[1]), int(match[2] or 1)
        if multiple < 1:
            return spot.wrong(f"is {shown(value)}; the period cannot be zero.")
        per_seconds = multiple * RATE_UNITS[match[3]]
        if per_seconds > LONGEST_SECONDS:
            return spot.wrong(f"is {shown(value)}; the period must be at most ten years.")
        if count > MOST_PER_PERIOD:
            return spot.wrong(
                f"is {shown(value)}; the count must be at most {MOST_PER_PERIOD} per period."
            )
        return RateLimit(count, per_seconds)


@dataclass(frozen=True)
class CaFile:
    def read(self, value: object, spot: Spot) -> object:
        if not isinstance(value, str):
            return spot.wrong_type("a string", value)
        if not os.path.isfile(value):
            return spot.wrong(f"{shown(value)} is not a readable file.")
        return value


#: Python identifiers joined by dots: what import_string can take.
DOTTED_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


@dataclass(frozen=True)
class DottedPath:
    """A dotted path to a callable, in a field that may hold a secret by mistake.

    The value is never shown: a token pasted where its callable's path belongs, even one
    that happens to look like a dotted path ("ya29.a0Af…"), must not reach a message.
    """

    def read(self, value: object, spot: Spot) -> object:
        if not isinstance(value, str):
            return spot.wrong_type("a string", value)
        if not value:
            return value
        if not DOTTED_PATH.fullmatch(value):
            return spot.wrong(
                "does not look like a dotted path to a callable (its value is not shown: "
                "it may be the token itself).",
                "Put the token behind a function and give its path, e.g. "
                "'myproject.mail.oauth_token'.",
            )
        problem = import_problem(value)
        return value if problem is None else spot.wrong(f"{problem}.")


def import_problem(path: str) -> str | None:
    """Why ``path`` cannot be imported as a callable, without repeating ``path``; or None."""
    module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return "cannot be imported: no module of that name was found"
    except Exception as exc:  # the module exists and fails as it is imported
        return f"cannot be imported: importing its module raised {type(exc).__name__}"
    try:
        target = getattr(module, attribute)
    except Exception:  # AttributeError, or whatever a module's __getattr__ raises
        return "cannot be imported: its module has no attribute of that name"
    if not callable(target):
        return "is not callable"
    return None


@dataclass(frozen=True)
class Nested:
    """A dict read through its own table, then checked whole and built into a value."""

    table: Table
    build: Callable[[Readings], object]
    rules: tuple[Callable[[Readings, Report], None], ...] = ()

    def read(self, value: object, spot: Spot) -> object:
        if not isinstance(value, Mapping):
            return spot.wrong_type("a dict", value)
        report = spot.report
        errors = report.error_count
        report_unknown_keys(self.table, value, spot.path, report)
        readings = read_table(
            self.table, [Layer.of(value, spot.path)], home=spot.path, report=report
        )
        for rule in self.rules:
            rule(readings, report)
        return self.build(readings) if report.error_count == errors else INVALID


_REPLY_CODE = re.compile(r"[245][0-9x][0-9x]", re.ASCII)
_ENHANCED_CODE = re.compile(
    r"[245]\.[0-9]{1,3}\.(?:[0-9]{1,3})?|[245]\.(?:[0-9]{1,3}\.)?", re.ASCII
)


@dataclass(frozen=True)
class ReplyCode:
    """550, "550", or a class like "4xx" / "55x"; "" is no condition."""

    def read(self, value: object, spot: Spot) -> object:
        if _is_integer(value) and 200 <= value <= 599:  # type: ignore[operator]
            return str(value)
        if isinstance(value, str) and (value == "" or _REPLY_CODE.fullmatch(value.lower())):
            return value
        return spot.wrong(
            f"is {shown(value)}; expected a reply code like 550 or a class like '4xx'."
        )


@dataclass(frozen=True)
class EnhancedCode:
    """An RFC 3463 code ("5.4.5") or a prefix ending in a dot ("5.7."); "" is no condition."""

    def read(self, value: object, spot: Spot) -> object:
        if isinstance(value, str) and (value == "" or _ENHANCED_CODE.fullmatch(value)):
            return value
        return spot.wrong(
            f"is {shown(value)}; expected an enhanced status code like '5.4.5' or a prefix "
            "like '5.7.'."
        )


@dataclass(frozen=True)
class ReplyPattern:
    """A regular expression searched in the reply text; "" is no condition."""

    def read(self, value: object, spot: Spot) -> object:
        if not isinstance(value, str):
            return spot.wrong_type("a string", value)
        try:
            re.compile(value)
        except Exception as exc:  # re.error, or RecursionError/OverflowError on huge patterns
            return spot.wrong(f"is not a valid regular expression: {exc}.")
        return value


#: Provider names are stored with every message (``OutboundMessage.provider``).
LONGEST_PROVIDER_NAME = 100
_PROVIDERS_EXAMPLE = (
    'e.g. "PROVIDERS": {"main": {"PRESET": "strato", "USERNAME": ..., "PASSWORD": ...}}'
)


@dataclass(frozen=True)
class ProviderNames:
    """The PROVIDERS dict: at least one provider, each under a usable name.

    Read as the entries whose name is usable; each provider's own values are read later,
    through the provider table.
    """

    def read(self, value: object, spot: Spot) -> object:
        if value is None or (isinstance(value, Mapping) and not value):
            return spot.wrong("must define at least one provider.", _PROVIDERS_EXAMPLE)
        if not isinstance(value, Mapping):
            return spot.wrong_type("a dict", value)
        usable = {}
        for name, values in value.items():
            if isinstance(name, str) and 0 < len(name) <= LONGEST_PROVIDER_NAME:
                usable[name] = values
            else:
                spot.wrong(
                    f"has a provider named {shown(name)}; a provider's name must be a string "
                    f"of 1 to {LONGEST_PROVIDER_NAME} characters."
                )
        return usable


@dataclass(frozen=True)
class Routes:
    """Sender domain → provider name (whether that provider exists is a rule's to say).

    Read as the usable entries, so the routes beside a broken one are still checked.
    """

    def read(self, value: object, spot: Spot) -> object:
        if not isinstance(value, Mapping):
            return spot.wrong_type("a dict", value)
        routes: dict[str, str] = {}
        for domain, target in value.items():
            if not isinstance(domain, str) or not domain.strip():
                spot.report.error(
                    spot.field.type_id,
                    f"{spot.path} maps {shown(domain)}, which is not a sender domain.",
                    "Keys are domains such as 'billing.example.com'.",
                )
            elif not isinstance(target, str):
                spot.at(domain).wrong_type("a provider's name", target)
            else:
                routes[domain] = target
        return routes
