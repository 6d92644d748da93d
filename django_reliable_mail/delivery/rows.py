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

from collections.abc import Callable, Sequence
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


def _as_text(value: Any) -> Any:
    # Choices enums are str subclasses; not every database driver adapts those.
    return value if value is None or type(value) is str else str(value)


def _converter(field: models.Field, connection: Any) -> Callable[[Any], Any]:
    if isinstance(field, models.CharField | models.TextField):
        return _as_text
    if isinstance(field, _PLAIN):
        return lambda value: value
    return lambda value: field.get_db_prep_save(value, connection)


def converted(field: models.Field, connection: Any, value: Any) -> Any:
    """``value`` as this module binds it for ``field``."""
    return _converter(field, connection)(value)


def _assignments(connection: Any, fields: list[models.Field]) -> str:
    """``"a" = %s, "b" = %s`` (or ``$1``, ``$2``): the SET list of an UPDATE."""
    quote = connection.ops.quote_name
    marks = _marks(_numbered(connection), len(fields)).split(", ")
    return ", ".join(f"{quote(f.column)} = {m}" for f, m in zip(fields, marks, strict=True))


@lru_cache(maxsize=64)
def _insert_plan(model: type[models.Model], alias: str) -> tuple[str, list, list, set]:
    """The INSERT head, its fields, those stamped on save (auto_now), the JSON columns.

    Only strings and fields are kept: the connection object is per thread.
    """
    quote = connections[alias].ops.quote_name
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(quote(f.column) for f in fields)
    head = f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES "
    stamped = [
        f for f in fields if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
    ]
    json_columns = {i for i, f in enumerate(fields) if isinstance(f, models.JSONField)}
    return head, fields, stamped, json_columns


def insert(model: type[models.Model], objects: Sequence[models.Model]) -> None:
    """INSERT ``objects`` (new, unsaved) and set their primary keys.

    Where the database cannot return ids from a multi-row INSERT, Django's ``bulk_create``
    does the work instead.
    """
    if not objects:
        return
    alias = router.db_for_write(model)
    connection = connections[alias]
    if not connection.features.can_return_rows_from_bulk_insert:
        model.objects.using(alias).bulk_create(objects)
        return
    _, fields, stamped, json_columns = _insert_plan(model, alias)
    converters = [_converter(f, connection) for f in fields]
    memo: dict[tuple[int, tuple], Any] = {}  # the same extension list on every attempt
    params = [_row_params(obj, fields, converters, stamped, json_columns, memo) for obj in objects]
    for obj, pk in zip(objects, _insert_rows(model, connection, params), strict=True):
        obj.pk = pk
        obj._state.adding = False
        obj._state.db = alias


def insert_values(model: type[models.Model], rows: Sequence[dict[str, Any]]) -> list[Any]:
    """INSERT rows given as ``{attname: value}`` for every concrete field but the primary
    key, and return their primary keys in order: for a caller that needs the rows stored
    more than it needs model instances (building those first costs more than the insert).
    The model must have no ``auto_now`` fields (nothing stamps them here)."""
    if not rows:
        return []
    alias = router.db_for_write(model)
    connection = connections[alias]
    _, fields, stamped, json_columns = _insert_plan(model, alias)
    if stamped:
        raise ValueError(f"{model.__name__} has auto_now fields: use insert()")
    if not connection.features.can_return_rows_from_bulk_insert:
        objects = [model(**row) for row in rows]
        model.objects.using(alias).bulk_create(objects)
        return [obj.pk for obj in objects]
    names = [f.attname for f in fields]
    converters = [_converter(f, connection) for f in fields]
    memo: dict[tuple[int, tuple], Any] = {}
    params = [
        _converted_row([row[name] for name in names], converters, json_columns, memo)
        for row in rows
    ]
    return _insert_rows(model, connection, params)


def _insert_rows(model: type[models.Model], connection: Any, rows: list[list[Any]]) -> list[Any]:
    """Multi-row ``INSERT … RETURNING id`` of converted parameter rows; the new ids."""
    head, fields, _, _ = _insert_plan(model, connection.alias)
    numbered = _numbered(connection)
    pk_column = connection.ops.quote_name(model._meta.pk.column)
    size = max(connection.ops.bulk_batch_size(fields, rows), 1) if len(rows) > 1 else 1
    pks: list[Any] = []
    with _cursor(connection) as cursor:
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            values = _values(numbered, len(chunk), len(fields))
            cursor.execute(
                f"{head}{values} RETURNING {pk_column}", [v for row in chunk for v in row]
            )
            pks.extend(pk for (pk,) in cursor.fetchall())
    return pks


def _row_params(
    obj: models.Model,
    fields: list,
    converters: list[Callable[[Any], Any]],
    stamped: list,
    json_columns: set,
    memo: dict,
) -> list[Any]:
    for field in stamped:
        field.pre_save(obj, add=True)
    values = [getattr(obj, field.attname) for field in fields]
    return _converted_row(values, converters, json_columns, memo)


def _converted_row(
    values: list[Any], converters: list[Callable[[Any], Any]], json_columns: set, memo: dict
) -> list[Any]:
    """One row's values, in field order, as they are bound (JSON lists converted once)."""
    return [
        _converted_once(memo, i, value, convert) if i in json_columns else convert(value)
        for i, (value, convert) in enumerate(zip(values, converters, strict=True))
    ]


def insert_one_sql(model: type[models.Model], connection: Any) -> str:
    """``INSERT … VALUES (%s, …)`` for one row of ``model``, for callers that build a larger
    statement around it (:func:`numbered` turns the marks into ``$n``); its parameters come
    from :func:`insert_params`."""
    head, fields, _, _ = _insert_plan(model, connection.alias)
    return head + "(" + _marks(False, len(fields)) + ")"


def insert_params(obj: models.Model, connection: Any) -> list[Any]:
    """The parameters of :func:`insert_one_sql` for one new object."""
    _, fields, stamped, json_columns = _insert_plan(type(obj), connection.alias)
    converters = [_converter(f, connection) for f in fields]
    return _row_params(obj, fields, converters, stamped, json_columns, {})


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


def _converted_once(memo: dict, column: int, value: Any, convert: Callable) -> Any:
    if not isinstance(value, list):
        return convert(value)
    try:
        key = (column, tuple(value))
        return memo[key]
    except TypeError:  # a list of unhashable items
        return convert(value)
    except KeyError:
        memo[key] = converted = convert(value)
        return converted


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
    converters = [_converter(f, connection) for f in fields]
    groups: dict[str, tuple[list[Any], list[Any]]] = {}
    for obj in objects:
        raw = [getattr(obj, f.attname) for f in fields]
        key = repr(raw)
        if key not in groups:
            values = [convert(value) for value, convert in zip(raw, converters, strict=True)]
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
    params = [_converter(f, connection)(values[f.name]) for f in fields]
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
            plan.append((i, col, converters))
    names = [f.attname for f in fields]
    alias = connection.alias
    loaded = []
    for row in fetched:
        values = list(row)
        for i, col, converters in plan:
            for convert in converters:
                values[i] = convert(values[i], col, connection)
        loaded.append(model.from_db(alias, names, values))
    return loaded
