"""Per-message delivery options: the one documented way to set them.

Set a dict (or :class:`DeliveryOptions`) on the message before sending::

    msg = EmailMessage(...)
    msg.reliable_mail = {"provider": "ses", "require_tls": True, "tags": ["reset"]}
    msg.send()

They travel as an attribute, never as a header, so nothing of them reaches the recipient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from .exceptions import InvalidMessageError

ATTRIBUTE = "reliable_mail"
DSN_NOTIFY = {"SUCCESS", "FAILURE", "DELAY", "NEVER"}
DSN_RET = {"FULL", "HDRS"}


@dataclass(frozen=True)
class DeliveryOptions:
    provider: str | None = None
    require_tls: bool = False
    priority: int = 0
    send_at: datetime | None = None
    idempotency_key: str | None = None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    dsn_notify: list[str] = field(default_factory=list)
    dsn_ret: str | None = None
    dsn_envid: str | None = None


_NAMES = {f.name for f in fields(DeliveryOptions)}


def options_of(message: Any) -> DeliveryOptions:
    """Read and validate a message's options; a mistake names the option and the value."""
    raw = getattr(message, ATTRIBUTE, None)
    if raw is None:
        return DeliveryOptions()
    if isinstance(raw, DeliveryOptions):
        raw = {f: getattr(raw, f) for f in _NAMES}
    if not isinstance(raw, dict):
        raise InvalidMessageError(
            f"message.{ATTRIBUTE} must be a dict or DeliveryOptions, not {type(raw).__name__}."
        )
    unknown = sorted(set(raw) - _NAMES)
    if unknown:
        raise InvalidMessageError(
            f"message.{ATTRIBUTE} has unknown option(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(_NAMES))}."
        )
    opts = DeliveryOptions(**raw)

    def bad(name: str, expected: str) -> InvalidMessageError:
        return InvalidMessageError(
            f"message.{ATTRIBUTE}[{name!r}] must be {expected}, not {raw[name]!r}."
        )

    if opts.provider is not None and not isinstance(opts.provider, str):
        raise bad("provider", "a provider name")
    if not isinstance(opts.require_tls, bool):
        raise bad("require_tls", "True or False")
    if isinstance(opts.priority, bool) or not isinstance(opts.priority, int):
        raise bad("priority", "an integer")
    if opts.send_at is not None and not isinstance(opts.send_at, datetime):
        raise bad("send_at", "a datetime")
    if opts.idempotency_key is not None and (
        not isinstance(opts.idempotency_key, str) or not 0 < len(opts.idempotency_key) <= 255
    ):
        raise bad("idempotency_key", "a string of 1 to 255 characters")
    if not isinstance(opts.tags, list | tuple) or not all(isinstance(t, str) for t in opts.tags):
        raise bad("tags", "a list of strings")
    if not isinstance(opts.metadata, dict):
        raise bad("metadata", "a dict")
    notify = (
        [str(n).upper() for n in opts.dsn_notify]
        if isinstance(opts.dsn_notify, list | tuple)
        else None
    )
    if notify is None or not set(notify) <= DSN_NOTIFY or ("NEVER" in notify and len(notify) > 1):
        raise bad("dsn_notify", "a list of SUCCESS, FAILURE, DELAY (or just NEVER)")
    if opts.dsn_ret is not None and str(opts.dsn_ret).upper() not in DSN_RET:
        raise bad("dsn_ret", "'FULL' or 'HDRS'")
    if opts.dsn_envid is not None and (
        not isinstance(opts.dsn_envid, str)
        or not re.fullmatch(r"[\x21-\x7e]{1,100}", opts.dsn_envid)
    ):
        raise bad("dsn_envid", "printable ASCII of at most 100 characters")
    return DeliveryOptions(
        **{
            **{f: getattr(opts, f) for f in _NAMES},
            "tags": list(opts.tags),
            "dsn_notify": notify,
            "dsn_ret": opts.dsn_ret.upper() if opts.dsn_ret else None,
        }
    )
