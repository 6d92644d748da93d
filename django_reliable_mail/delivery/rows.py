"""Bulk INSERT and UPDATE of our own rows on the hot paths, with statements built once.

``send_mail()`` stores a message and its recipients, and every batch of attempts stores its
rows and moves its messages on. Django's ``bulk_create`` and ``bulk_update`` compile a query
for every call and prepare every value through the field API, which costs more than the
database work itself here. These helpers build each statement once per table and field list,
convert only the values that need it (dates, JSON, bytes) and still go through Django's
cursor wrapper, so its execute wrappers and ``connection.queries`` see them.

On PostgreSQL with psycopg 3.2+ the parameters are bound on the server. Django binds them
on the client by default, turning every value into an SQL literal, and for a bulk statement
that quoting (and scanning the statement for placeholders) costs more than the database
work: about 80 µs per attempt row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.db import connections, models, router

_PLAIN = (
    models.CharField,
    models.TextField,
    models.IntegerField,
    models.BooleanField,
    models.ForeignKey,
)


def _cursor(connection: Any) -> Any:
    """A cursor of ``connection``; one that binds on the server where that is possible."""
    raw_class = _raw_cursor_class(connection.vendor)
    if raw_class is None:
        return connection.cursor()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        raw = raw_class(connection.connection)
    return connection._prepare_cursor(raw)


@lru_cache(maxsize=4)
def _raw_cursor_class(vendor: str) -> Any:
    """psycopg's RawCursor (3.2+): server-side binding with PostgreSQL's own ``$n``
    placeholders, so a long statement is not scanned for ``%s`` on every call either."""
    if vendor != "postgresql":
        return None
    try:
        from psycopg import RawCursor
    except ImportError:  # psycopg2, or psycopg before 3.2
        return None
    return RawCursor


def _numbered(connection: Any) -> bool:
    """Whether :func:`_cursor` gives this connection a cursor that wants ``$n`` marks."""
    return _raw_cursor_class(connection.vendor) is not None


@lru_cache(maxsize=256)
def _marks(numbered: bool, count: int, first: int = 1) -> str:
    """``count`` placeholders, numbered from ``first`` where the cursor wants ``$n``."""
    if numbered:
        return ", ".join(f"${i}" for i in range(first, first + count))
    return ", ".join(["%s"] * count)


@lru_cache(maxsize=64)
def _values(numbered: bool, rows: int, columns: int) -> str:
    return ", ".join(f"({_marks(numbered, columns, 1 + r * columns)})" for r in range(rows))


def _as_text(value: Any, connection: Any) -> Any:
    # Choices enums are str subclasses; not every database driver adapts those.
    return value if value is None or type(value) is str else str(value)


def _as_is(value: Any, connection: Any) -> Any:
    return value


def _prepared(field: models.Field) -> Callable[[Any, Any], Any]:
    def prepare(value: Any, connection: Any) -> Any:
        # Every field stores None as NULL (JSONField too: JSON null needs a Value()).
        return None if value is None else field.get_db_prep_save(value, connection)

    return prepare


def _prepared_datetime(field: models.Field) -> Callable[[Any, Any], Any]:
    def prepare(value: Any, connection: Any) -> Any:
        if value is None:
            return None
        if type(value) is datetime and value.utcoffset() is not None:
            # An aware datetime passes get_prep_value() unchanged; naive ones still go
            # through it (and its warning).
            return connection.ops.adapt_datetimefield_value(value)
        return field.get_db_prep_save(value, connection)

    return prepare


@lru_cache(maxsize=512)
def _converter(field: models.Field) -> Callable[[Any, Any], Any]:
    """``convert(value, connection)``: the value as it is bound for ``field``."""
    if isinstance(field, models.CharField | models.TextField):
        return _as_text
    if isinstance(field, _PLAIN):
        return _as_is
    if isinstance(field, models.DateTimeField):
        return _prepared_datetime(field)
    return _prepared(field)


def converted(field: models.Field, connection: Any, value: Any) -> Any:
    """``value`` as this module binds it for ``field``."""
    return _converter(field)(value, connection)


def _assignments(connection: Any, fields: list[models.Field]) -> str:
    """``"a" = %s, "b" = %s`` (or ``$1``, ``$2``): the SET list of an UPDATE."""
    quote = connection.ops.quote_name
    marks = _marks(_numbered(connection), len(fields)).split(", ")
    return ", ".join(f"{quote(f.column)} = {m}" for f, m in zip(fields, marks, strict=True))


@dataclass(frozen=True)
class _InsertPlan:
    head: str  # INSERT INTO … (columns) VALUES
    #: Every concrete field but a generated primary key, in the order positional model
    #: arguments take them.
    fields: list[models.Field]
    #: How each column's values are bound, by kind, so that a row costs a few short loops
    #: rather than a call per column: columns bound as they are appear in none of these.
    text_columns: tuple[int, ...]
    json_columns: tuple[tuple[int, Callable[[Any, Any], Any]], ...]
    datetime_columns: tuple[tuple[int, Callable[[Any, Any], Any]], ...]
    other_columns: tuple[tuple[int, Callable[[Any, Any], Any]], ...]
    #: Bound forms of ``{}`` and ``[]`` per JSON column, converted once per process.
    empties: dict[tuple[int, type], Any] = dataclasses.field(default_factory=dict)


@lru_cache(maxsize=64)
def _insert_plan(model: type[models.Model], alias: str) -> _InsertPlan:
    """Only strings and fields are kept: the connection object is per thread."""
    quote = connections[alias].ops.quote_name
    # A primary key the database generates is returned, not given (a one-to-one key is given).
    fields = [f for f in model._meta.concrete_fields if not (f.primary_key and f.db_returning)]
    columns = ", ".join(quote(f.column) for f in fields)
    kinds: dict[str, list[Any]] = {"text": [], "json": [], "datetime": [], "other": []}
    for i, field in enumerate(fields):
        convert = _converter(field)
        if convert is _as_is:
            continue
        if convert is _as_text:
            kinds["text"].append(i)
        elif isinstance(field, models.JSONField):
            kinds["json"].append((i, convert))
        elif isinstance(field, models.DateTimeField):
            kinds["datetime"].append((i, convert))
        else:
            kinds["other"].append((i, convert))
    return _InsertPlan(
        head=f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES ",
        fields=fields,
        text_columns=tuple(kinds["text"]),
        json_columns=tuple(kinds["json"]),
        datetime_columns=tuple(kinds["datetime"]),
        other_columns=tuple(kinds["other"]),
    )


def insert_values(model: type[models.Model], rows: Sequence[dict[str, Any]]) -> list[Any]:
    """INSERT rows given as ``{attname: value}`` for every concrete field but the primary
    key (:func:`new_values` fills in the defaults), and return their primary keys in order.

    No model instances are built: on the hot paths they cost more than the insert, and
    :func:`stored` makes one afterwards where a caller needs it. Nothing is stamped here,
    so ``auto_now`` fields must be given like any other.
    """
    if not rows:
        return []
    alias = router.db_for_write(model)
    connection = connections[alias]
    if not connection.features.can_return_rows_from_bulk_insert:
        objects = [model(**row) for row in rows]
        model.objects.using(alias).bulk_create(objects)
        if any(obj.pk is None for obj in objects):
            raise RuntimeError(f"the database returned no ids for new {model.__name__} rows")
        return [obj.pk for obj in objects]
    plan = _insert_plan(model, alias)
    names = [f.attname for f in plan.fields]
    memo: dict[tuple[int, Any], Any] = {}
    params = [_converted_row([row[name] for name in names], plan, connection, memo) for row in rows]
    return _insert_rows(model, connection, params)


def new_values(model: type[models.Model], **given: Any) -> dict[str, Any]:
    """``{attname: value}`` of a new row: ``given``, and every other field's default."""
    return {
        field.attname: given[field.attname] if field.attname in given else field.get_default()
        for field in _insert_plan(model, router.db_for_write(model)).fields
    }


def stored(model: type[models.Model], pk: Any, values: dict[str, Any], alias: str) -> Any:
    """The row just inserted from ``values`` as a model instance, for signals and callers:
    positional arguments take Django's fast path."""
    obj = model(pk, *(values[field.attname] for field in _insert_plan(model, alias).fields))
    obj._state.adding = False
    obj._state.db = alias
    return obj


def _insert_rows(model: type[models.Model], connection: Any, rows: list[list[Any]]) -> list[Any]:
    """Multi-row ``INSERT … RETURNING id`` of converted parameter rows; the new ids."""
    plan = _insert_plan(model, connection.alias)
    numbered = _numbered(connection)
    pk_column = connection.ops.quote_name(model._meta.pk.column)
    size = max(connection.ops.bulk_batch_size(plan.fields, rows), 1) if len(rows) > 1 else 1
    pks: list[Any] = []
    with _cursor(connection) as cursor:
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            values = _values(numbered, len(chunk), len(plan.fields))
            cursor.execute(
                f"{plan.head}{values} RETURNING {pk_column}", [v for row in chunk for v in row]
            )
            pks.extend(pk for (pk,) in cursor.fetchall())
    return pks


def _converted_row(values: list[Any], plan: _InsertPlan, connection: Any, memo: dict) -> list[Any]:
    """One row's values, in field order, as they are bound (``values`` becomes the row)."""
    row = values
    for i in plan.text_columns:
        value = row[i]
        if value is not None and type(value) is not str:
            row[i] = str(value)  # choices enums are str subclasses: not every driver adapts those
    for i, convert in plan.json_columns:
        row[i] = _converted_json(plan, memo, i, row[i], convert, connection)
    for i, convert in plan.datetime_columns:
        value = row[i]
        if value is not None:
            # One timestamp is often several columns (created, updated, next attempt).
            try:
                row[i] = memo[value]
            except KeyError:
                memo[value] = row[i] = convert(value, connection)
    for i, convert in plan.other_columns:
        row[i] = convert(row[i], connection)
    return row


def insert_one_sql(model: type[models.Model], connection: Any) -> str:
    """``INSERT … VALUES (%s, …)`` for one row of ``model``, for callers that build a larger
    statement around it (:func:`numbered` turns the marks into ``$n``); its parameters come
    from :func:`insert_params`."""
    plan = _insert_plan(model, connection.alias)
    return plan.head + "(" + _marks(False, len(plan.fields)) + ")"


def insert_params(model: type[models.Model], values: dict[str, Any], connection: Any) -> list[Any]:
    """The parameters of :func:`insert_one_sql` for one row given as in
    :func:`insert_values`."""
    plan = _insert_plan(model, connection.alias)
    return _converted_row([values[f.attname] for f in plan.fields], plan, connection, {})


def numbered(sql: str, connection: Any) -> str:
    """``sql`` with its ``%s`` marks as ``$1``, ``$2``… where :func:`cursor` binds that way.

    Only for statements built here, from quoted names and marks (no literal ``%s``)."""
    if not _numbered(connection):
        return sql
    parts = sql.split("%s")
    return "".join(
        part + (f"${i}" if i < len(parts) else "") for i, part in enumerate(parts, start=1)
    )


def cursor(connection: Any) -> Any:
    """A cursor for statements of this module's style (see :func:`numbered`)."""
    return _cursor(connection)


def _converted_json(
    plan: _InsertPlan, memo: dict, column: int, value: Any, convert: Callable, connection: Any
) -> Any:
    """A JSON column's value as bound, converted once where it repeats: ``{}`` and ``[]``
    once per process (from a private empty one, so no caller's object is kept), a list of
    strings once per call (the same extension list on every attempt). Only those: ``[1]``
    and ``[True]`` are equal keys but different JSON."""
    kind = type(value)
    if (kind is dict or kind is list) and not value:
        try:
            return plan.empties[column, kind]
        except KeyError:
            plan.empties[column, kind] = bound = convert(kind(), connection)
            return bound
    if kind is not list or not all(type(item) is str for item in value):
        return convert(value, connection)
    key = (column, tuple(value))
    try:
        return memo[key]
    except KeyError:
        memo[key] = bound = convert(value, connection)
        return bound


def update(model: type[models.Model], objects: Sequence[models.Model], names: list[str]) -> None:
    """UPDATE these fields of these rows in as few statements as the values allow.

    Rows that get identical values (most of a batch: "sent", same time, same count) share
    one ``UPDATE … WHERE id IN (…)``; the others go through one prepared statement run
    for each row. Django's ``bulk_update`` builds a CASE expression per field and row,
    which costs far more than the database work.
    """
    if not objects:
        return
    alias = router.db_for_write(model)
    connection = connections[alias]
    fields = [model._meta.get_field(name) for name in names]
    quote = connection.ops.quote_name
    table, pk = quote(model._meta.db_table), quote(model._meta.pk.column)
    numbered = _numbered(connection)
    converters = [_converter(f) for f in fields]
    groups: dict[tuple, tuple[list[Any], list[Any]]] = {}
    for obj in objects:
        raw = [getattr(obj, f.attname) for f in fields]
        key = _same_values_key(raw)
        if key not in groups:
            values = [
                convert(value, connection) for value, convert in zip(raw, converters, strict=True)
            ]
            groups[key] = (values, [])
        groups[key][1].append(obj.pk)
    singles = []
    with _cursor(connection) as cursor:
        for values, pks in groups.values():
            if len(pks) == 1:
                singles.append([*values, pks[0]])
            else:
                _update_ids(cursor, model, fields, values, pks)
        if len(singles) > 1 and numbered:
            _update_from_values(cursor, connection, table, pk, fields, singles)
        elif singles:
            one = _marks(numbered, 1, len(fields) + 1)
            assignments = _assignments(connection, fields)
            cursor.executemany(f"UPDATE {table} SET {assignments} WHERE {pk} = {one}", singles)


def _same_values_key(raw: list[Any]) -> tuple:
    """A key equal for rows that bind the same values: types included (``1`` and ``True``
    are equal in Python), JSON containers by their repr (they are not hashable)."""
    key = tuple(
        (type(value), repr(value) if type(value) in (dict, list) else value) for value in raw
    )
    try:
        hash(key)
    except TypeError:  # something else unhashable (a tuple holding a list…)
        return (repr(raw),)
    return key


def _update_ids(
    cursor: Any, model: type[models.Model], fields: list, values: list, ids: Sequence[int]
) -> None:
    """The same converted ``values`` for all ``ids``: ``UPDATE … WHERE id IN (…)``."""
    connection = cursor.db
    quote = connection.ops.quote_name
    table, pk = quote(model._meta.db_table), quote(model._meta.pk.column)
    assignments = _assignments(connection, fields)
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        marks = _marks(_numbered(connection), len(chunk), len(fields) + 1)
        cursor.execute(
            f"UPDATE {table} SET {assignments} WHERE {pk} IN ({marks})", [*values, *chunk]
        )


def _update_from_values(
    cursor: Any, connection: Any, table: str, pk: str, fields: list, rows: list[list[Any]]
) -> None:
    """PostgreSQL: rows with values of their own in one ``UPDATE … FROM (VALUES …)``.

    One statement instead of one execution per row; the placeholders are cast to the
    column types, which a VALUES list cannot infer from bound parameters.
    """
    quote = connection.ops.quote_name
    names = [quote(f"v{i}") for i in range(len(fields))] + [quote("v_id")]
    types = [f.db_type(connection) for f in fields] + ["bigint"]
    assignments = ", ".join(
        f"{quote(f.column)} = v.{name}" for f, name in zip(fields, names[:-1], strict=True)
    )
    width = len(types)
    for start in range(0, len(rows), 1000):
        chunk = rows[start : start + 1000]
        values = ", ".join(
            "(" + ", ".join(f"${r * width + i + 1}::{t}" for i, t in enumerate(types)) + ")"
            for r in range(len(chunk))
        )
        cursor.execute(
            f"UPDATE {table} SET {assignments} FROM (VALUES {values}) AS v({', '.join(names)}) "
            f"WHERE {table}.{pk} = v.{names[-1]}",
            [value for row in chunk for value in row],
        )


def set_by_ids(model: type[models.Model], ids: Sequence[int], **values: Any) -> None:
    """``UPDATE … SET <values> WHERE id IN (ids)``, without building a queryset."""
    if not ids:
        return
    connection = connections[router.db_for_write(model)]
    fields = [model._meta.get_field(name) for name in values]
    params = [converted(f, connection, values[f.name]) for f in fields]
    with _cursor(connection) as cursor:
        _update_ids(cursor, model, fields, params, ids)


def values_by_ids(
    model: type[models.Model], ids: Sequence[int], names: list[str]
) -> dict[int, tuple]:
    """``{id: (values of names)}`` for these rows, as stored (no conversion)."""
    if not ids:
        return {}
    connection = connections[router.db_for_read(model)]
    quote = connection.ops.quote_name
    pk = quote(model._meta.pk.column)
    columns = ", ".join([pk, *(quote(model._meta.get_field(n).column) for n in names)])
    marks = _marks(_numbered(connection), len(ids))
    with _cursor(connection) as cursor:
        cursor.execute(
            f"SELECT {columns} FROM {quote(model._meta.db_table)} WHERE {pk} IN ({marks})",
            list(ids),
        )
        return {row[0]: tuple(row[1:]) for row in cursor.fetchall()}


def columns(model: type[models.Model], connection: Any) -> str:
    """Every concrete column of ``model``, quoted, in field order (what :func:`load` reads)."""
    quote = connection.ops.quote_name
    return ", ".join(quote(f.column) for f in model._meta.concrete_fields)


def load(model: type[models.Model], connection: Any, fetched: Sequence[Sequence[Any]]) -> list:
    """Model instances from rows of :func:`columns`, converted as a queryset converts them
    (the backend's converters, then each field's ``from_db_value``)."""
    fields = model._meta.concrete_fields
    plan = []
    for i, field in enumerate(fields):
        col = field.cached_col
        converters = connection.ops.get_db_converters(col) + field.get_db_converters(connection)
        if converters:
            # A timestamp read back is immutable and often repeats down a batch (the claim
            # sets one lease and one update time on every row): parsed once per value.
            shared = isinstance(field, models.DateTimeField | models.DateField)
            plain_json = isinstance(field, models.JSONField) and field.decoder is None
            plan.append((i, col, converters, shared, plain_json))
    names = [f.attname for f in fields]
    alias = connection.alias
    loaded = []
    parsed: dict[Any, Any] = {}
    for row in fetched:
        values = list(row)
        for i, col, converters, shared, plain_json in plan:
            raw = values[i]
            if raw is None:
                continue  # NULL stays None through every converter of our fields
            if plain_json and (raw == "{}" or raw == "[]"):
                values[i] = {} if raw == "{}" else []  # what json.loads gives, cheaper
                continue
            if shared:
                try:
                    values[i] = parsed[i, raw]
                    continue
                except KeyError:
                    pass
            value = raw
            for convert in converters:
                value = convert(value, col, connection)
            values[i] = value
            if shared:
                parsed[i, raw] = value
        loaded.append(model.from_db(alias, names, values))
    return loaded
