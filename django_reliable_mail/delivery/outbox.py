"""Store messages: validate them fully, then insert them in the caller's transaction."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.core.mail import EmailMessage
from django.db import IntegrityError, connections, router
from django.utils import timezone

from .. import signals
from ..conf import Config
from ..exceptions import InvalidMessageError
from ..models import MessageBody, OutboundMessage, RecipientStatus
from ..options import DeliveryOptions, options_of
from ..serialize import SerializedMessage, recipients_of, serialize
from ..status import SendStatus, set_status
from ..transactions import writing
from . import rows
from .states import Status

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Prepared:
    serialized: SerializedMessage
    options: DeliveryOptions
    provider: str
    #: The message it was prepared from: it gets the result handle (``status.py``).
    message: Any = dataclasses.field(default=None, compare=False, repr=False)


def prepare(message: EmailMessage, *, config: Config, provider: str | None) -> _Prepared:
    """Validate one message fully before anything is written."""
    options = options_of(message)
    serialized = serialize(message)
    name = options.provider or provider or config.route(serialized.from_email)
    config.provider(name)  # UnknownProviderError names the configured ones
    return _Prepared(serialized, options, name, message)


def _without_known_keys(prepared: Sequence[_Prepared]) -> list[_Prepared]:
    """Drop messages whose idempotency key is already stored (or repeated in this batch);
    each dropped one gets the stored message's handle, marked as a duplicate."""
    keys = [p.options.idempotency_key for p in prepared if p.options.idempotency_key]
    seen: dict[str, SendStatus | None] = (
        {
            key: SendStatus(pk, status, provider, duplicate=True)
            for key, pk, status, provider in OutboundMessage.objects.filter(
                idempotency_key__in=keys
            ).values_list("idempotency_key", "pk", "status", "provider")
        }
        if keys
        else {}
    )
    fresh = []
    for p in prepared:
        key = p.options.idempotency_key
        if key is not None:
            if key in seen:
                logger.info("message with idempotency key %r is already queued", key)
                known = seen[key]
                if known is not None:
                    set_status(p.message, known)
                continue
            seen[key] = None  # the first of this batch: its handle comes when it is stored
        fresh.append(p)
    return fresh


def enqueue(
    prepared: Sequence[_Prepared],
    *,
    mailer: str | None = None,
    arguments: dict[str, Any] | None = None,
) -> list[OutboundMessage]:
    """Store messages (status ``queued``) in the caller's transaction, all or none.

    A message whose idempotency key is already stored (within the retention window: purged
    messages take their keys with them) is not stored again. Two concurrent senders of the
    same key are settled by the unique constraint. ``arguments``: backend arguments stored
    with each message (never a secret), for the worker to apply again.
    """
    prepared = _without_known_keys(prepared)
    if not prepared:
        return []
    # A savepoint is only needed to survive a lost idempotency-key race inside the caller's
    # transaction; without keys it would cost two extra round trips per send.
    keyed = any(p.options.idempotency_key for p in prepared)
    try:
        with writing(savepoint=keyed):
            created = _insert(prepared, mailer=mailer, arguments=arguments)
    except IntegrityError:
        if not any(p.options.idempotency_key for p in prepared):
            raise
        # Lost a race on a key: store one by one, skipping keys someone else stored first.
        created = []
        for one in _without_known_keys(prepared):
            try:
                with writing():
                    created.extend(_insert([one], mailer=mailer, arguments=arguments))
            except IntegrityError:
                if one.options.idempotency_key is None:
                    raise
    for row in created:
        signals.message_queued.send(sender=OutboundMessage, message=row)
    return created


def enqueues_in_one_statement(prepared: Sequence[_Prepared]) -> bool:
    """Whether :func:`enqueue_in_one_statement` can store these: one message without an
    idempotency key (a key needs the savepoint of :func:`enqueue`), on PostgreSQL."""
    connection = connections[router.db_for_write(OutboundMessage)]
    return (
        len(prepared) == 1
        and prepared[0].options.idempotency_key is None
        and connection.vendor == "postgresql"
    )


def enqueue_in_one_statement(
    prepared: _Prepared,
    *,
    mailer: str | None,
    wake_check: tuple[str, list[Any], str] | None,
    arguments: dict[str, Any] | None = None,
) -> tuple[OutboundMessage, bool]:
    """PostgreSQL: the message, its body, its recipient rows and the wake-up check in one
    statement.

    Each statement is a network round trip; ``send_mail()`` would otherwise take six
    (BEGIN, three INSERTs, the wake-up check, COMMIT). Outside a transaction the statement
    commits by itself. ``wake_check`` is :func:`tasks.pending_wake_check`'s query; returns
    the stored row and whether that wake-up is still waiting (and now locked until commit).
    """
    connection = connections[router.db_for_write(OutboundMessage)]
    (values,) = _message_values([prepared], mailer=mailer, arguments=arguments)
    message_params = rows.insert_params(OutboundMessage, values, connection)
    check_sql, check_params, payload = wake_check or (None, [], None)
    sql, defaults = _one_statement(connection.alias, check_sql)
    data = prepared.serialized.data
    params = [*message_params, *defaults, list(values["recipients"]), data, *check_params]
    with rows.cursor(connection) as cursor:
        cursor.execute(sql, params)
        pk, found = cursor.fetchone()
    row = _stored(pk, values, prepared, connection.alias)
    signals.message_queued.send(sender=OutboundMessage, message=row)
    return row, payload is not None and found == payload


@lru_cache(maxsize=16)
def _one_statement(alias: str, check_sql: str | None) -> tuple[str, tuple[Any, ...]]:
    """The statement of :func:`enqueue_in_one_statement` (built once per database and wake-up
    query) and the values of the recipient columns that take their defaults."""
    connection = connections[alias]
    quote = connection.ops.quote_name
    meta = RecipientStatus._meta
    body = MessageBody._meta
    template = rows.new_values(RecipientStatus, message_id=0, address="")
    names, values, defaults = [], [], []
    for field in meta.concrete_fields:
        if field.primary_key:
            continue
        names.append(quote(field.column))
        if field.name == "message":
            values.append("m.id")
        elif field.name == "address":
            values.append("a.address")
        else:
            # Typed: in a SELECT list the server cannot infer a parameter's type.
            values.append(f"%s::{field.db_type(connection)}")
            defaults.append(rows.converted(field, connection, template[field.attname]))
    sql = (
        f"WITH m AS ({rows.insert_one_sql(OutboundMessage, connection)} "
        f"RETURNING {quote(OutboundMessage._meta.pk.column)} AS id), "
        f"r AS (INSERT INTO {quote(meta.db_table)} ({', '.join(names)}) "
        f"SELECT {', '.join(values)} FROM m, unnest(%s::text[]) WITH ORDINALITY AS a(address, n) "
        f"ORDER BY a.n), "
        f"b AS (INSERT INTO {quote(body.db_table)} "
        f"({quote(body.get_field('message').column)}, {quote(body.get_field('mime').column)}) "
        f"SELECT m.id, %s::{body.get_field('mime').db_type(connection)} FROM m)"
    )
    if check_sql is not None:
        sql += f", w AS ({check_sql}) SELECT m.id, (SELECT * FROM w) FROM m"
    else:
        sql += " SELECT m.id, NULL FROM m"
    return rows.numbered(sql, connection), tuple(defaults)


def _insert(
    prepared: Sequence[_Prepared], *, mailer: str | None, arguments: dict[str, Any] | None
) -> list[OutboundMessage]:
    values = _message_values(prepared, mailer=mailer, arguments=arguments)
    pks = rows.insert_values(OutboundMessage, values)
    rows.insert_values(
        MessageBody,
        [
            {"message_id": pk, "mime": p.serialized.data}
            for pk, p in zip(pks, prepared, strict=True)
        ],
    )
    rows.insert_values(
        RecipientStatus,
        [
            rows.new_values(RecipientStatus, message_id=pk, address=address)
            for pk, row in zip(pks, values, strict=True)
            for address in row["recipients"]
        ],
    )
    alias = router.db_for_write(OutboundMessage)
    return [_stored(pk, row, p, alias) for pk, row, p in zip(pks, values, prepared, strict=True)]


def _stored(pk: int, values: dict[str, Any], prepared: _Prepared, alias: str) -> OutboundMessage:
    """The stored message as an instance that has its body (an immediate send needs it)."""
    row = rows.stored(OutboundMessage, pk, values, alias)
    row._mime = prepared.serialized.data
    set_status(prepared.message, SendStatus(pk, row.status, row.provider))
    return row


def _message_values(
    prepared: Sequence[_Prepared], *, mailer: str | None, arguments: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """New message rows (status ``queued``) as ``{attname: value}``."""
    now = timezone.now()
    stored_options = {
        **({"mailer": mailer} if mailer else {}),
        **({"connection": arguments} if arguments else {}),
    }
    return [
        rows.new_values(
            OutboundMessage,
            created_at=now,
            updated_at=now,
            status=Status.QUEUED,
            provider=p.provider,
            from_email=p.serialized.from_email,
            recipients=p.serialized.recipients,
            subject=p.serialized.subject,
            message_id=p.serialized.message_id,
            size=len(p.serialized.data),
            priority=p.options.priority,
            send_at=p.options.send_at,
            next_attempt_at=p.options.send_at or now,
            require_tls=p.options.require_tls,
            idempotency_key=p.options.idempotency_key,
            tags=p.options.tags,
            metadata=p.options.metadata,
            options={**_dsn_options(p.options), **stored_options},
        )
        for p in prepared
    ]


def _dsn_options(options: DeliveryOptions) -> dict[str, Any]:
    dsn = {}
    if options.dsn_notify:
        dsn["dsn_notify"] = options.dsn_notify
    if options.dsn_ret:
        dsn["dsn_ret"] = options.dsn_ret
    if options.dsn_envid:
        dsn["dsn_envid"] = options.dsn_envid
    return dsn


def validate(
    messages: Sequence[EmailMessage],
    *,
    config: Config,
    provider: str | None,
    fail_silently: bool,
) -> list[_Prepared]:
    """Validate every message before anything is stored; return the ones to store.

    A message without any recipient is skipped (logged at info), with or without
    ``fail_silently``: Django's SMTP backend skips it too, and ``EmailMessage.send()`` never
    hands it to a backend. It is not invalid, only addressed to nobody. Any other invalid
    message: without ``fail_silently`` the error is raised and none of the messages is
    stored (the caller sees it, nothing is half-stored); with it, that message is skipped
    and logged at warning and the others are stored.
    """
    prepared: list[_Prepared] = []
    for position, message in enumerate(messages):
        try:
            if not recipients_of(message):
                logger.info(
                    "message %d of %d not queued: it has no recipients", position + 1, len(messages)
                )
                continue
            prepared.append(prepare(message, config=config, provider=provider))
        except InvalidMessageError as exc:
            if not fail_silently:
                raise
            logger.warning("message not queued: %s", exc)
    return prepared
