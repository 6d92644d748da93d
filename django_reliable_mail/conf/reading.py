"""Reading raw settings through a table of fields: the machinery, not the table itself.

A :class:`Table` lists :class:`Field` rows (key, check, default, error ids, secret or not);
:func:`read_table` takes each key from the first :class:`Layer` that has it (backend
options → the provider's dict → its preset), runs the field's check and keeps the result
with the path it came from, in :class:`Readings`.

Invariants: a check never raises, whatever the value; it reports through a :class:`Spot`,
which names the exact path and never shows the value of a secret field; a value that
failed its check is :data:`INVALID` from then on, so later rules can skip it instead of
reporting the same mistake twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Literal, Protocol

from .report import Path, Report
from .wording import did_you_mean, shown, type_name


class Marker(Enum):
    INVALID = "invalid"
    REQUIRED = "required"


#: The reading of a value that failed its check (the problem is already reported).
INVALID: Literal[Marker.INVALID] = Marker.INVALID
#: A field default: the key has no default, and its absence is the check's to report.
REQUIRED: Literal[Marker.REQUIRED] = Marker.REQUIRED


class Check(Protocol):
    """How one field's value is read: the parsed value, or :data:`INVALID` once reported."""

    def read(self, value: object, spot: Spot) -> object: ...


@dataclass(frozen=True)
class Field:
    """One row of a settings table."""

    key: str
    check: Check
    #: ``None``: optional, and ``None`` means "not set"; :data:`REQUIRED`: no default.
    default: object = None
    #: The id of this key's problems (bad range, format or choice).
    error_id: str = "E003"
    #: The value is never shown in a message (its type is, instead).
    secret: bool = False
    #: The id of a value of the wrong type.
    type_id: str = "E003"
    #: The attribute the value fills in the built dataclass: "" is the key in lower case,
    #: ``None`` none at all.
    attr: str | None = ""

    @property
    def attribute(self) -> str | None:
        return self.key.lower() if self.attr == "" else self.attr


@dataclass(frozen=True)
class Table:
    """The fields of one dict of settings, and how a key that is not one of them is named."""

    fields: tuple[Field, ...]
    unknown_id: str = "E002"
    unknown_message: str = "is not a known setting."

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(field.key for field in self.fields)

    def defaults(self) -> dict[str, Any]:
        return {f.key: None if f.default is REQUIRED else f.default for f in self.fields}

    def __add__(self, other: Table) -> Table:
        return replace(self, fields=self.fields + other.fields)


@dataclass(frozen=True)
class Spot:
    """One value being read: where it is, its row in the table, and where problems go."""

    path: Path
    field: Field
    report: Report

    def at(self, key: object) -> Spot:
        return replace(self, path=self.path / key)

    def show(self, value: object) -> str:
        return type_name(value) if self.field.secret else shown(value)

    def wrong_type(self, expected: str, value: object) -> Literal[Marker.INVALID]:
        message = f"{self.path} must be {expected}, not {self.show(value)}."
        self.report.error(self.field.type_id, message)
        return INVALID

    def wrong(self, message: str, hint: str = "") -> Literal[Marker.INVALID]:
        self.report.error(self.field.error_id, f"{self.path} {message}", hint)
        return INVALID


@dataclass(frozen=True)
class Layer:
    """One source of values and the path each came from."""

    values: Mapping[Any, object]
    paths: Mapping[Any, Path]
    #: Set by the user (settings or backend options), not filled in by a preset.
    given: bool = True

    @classmethod
    def of(cls, values: Mapping[Any, object], root: Path, *, given: bool = True) -> Layer:
        return cls(values, {key: root / key for key in values}, given)


@dataclass
class Readings:
    """What a table read: each key's value (or :data:`INVALID`) and where it came from."""

    #: Where the dict read lives (a key no layer had is read there).
    home: Path
    values: dict[str, object] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    #: The keys set by the user rather than by a preset or a default.
    given: frozenset[str] = frozenset()
    #: The values as given, before their checks.
    raw: dict[str, object] = field(default_factory=dict)

    def __getitem__(self, key: str) -> object:
        return self.values[key]

    def path(self, key: str) -> Path:
        return self.paths[key]

    def valid(self, *keys: str) -> bool:
        return all(self.values[key] is not INVALID for key in keys)

    def merged(self, other: Readings) -> Readings:
        """These readings and ``other``'s (another table read at the same place)."""
        return Readings(
            self.home,
            {**self.values, **other.values},
            {**self.paths, **other.paths},
            self.given | other.given,
            {**self.raw, **other.raw},
        )

    def arguments(self, table: Table) -> dict[str, Any]:
        """Keyword arguments for the dataclass the table describes."""
        return {f.attribute: self.values[f.key] for f in table.fields if f.attribute}


def read_table(table: Table, layers: Sequence[Layer], *, home: Path, report: Report) -> Readings:
    """Read every field of ``table``; a key no layer has is read at ``home`` as its default."""
    readings = Readings(home)
    given = set()
    for row in table.fields:
        layer = next((layer for layer in layers if row.key in layer.values), None)
        if layer is None:
            value, path = row.default, home / row.key
        else:
            value, path = layer.values[row.key], layer.paths[row.key]
            if layer.given:
                given.add(row.key)
        readings.raw[row.key] = None if value is REQUIRED else value
        readings.paths[row.key] = path
        readings.values[row.key] = read_value(row, value, Spot(path, row, report))
    readings.given = frozenset(given)
    return readings


def read_value(row: Field, value: object, spot: Spot) -> object:
    """One value through its field's check; ``None`` is "not set" where that is allowed."""
    if value is None and row.default is None:
        return None
    return row.check.read(None if value is REQUIRED else value, spot)


def report_unknown_keys(
    table: Table, values: Mapping[Any, object], at: Path, report: Report
) -> None:
    """Every key of ``values`` that is not in ``table``, with the closest known key."""
    for key in values:
        if key not in table.keys:
            hint = did_you_mean(key, table.keys) or f"Known keys: {', '.join(sorted(table.keys))}."
            report.error(table.unknown_id, f"{at / key} {table.unknown_message}", hint)
