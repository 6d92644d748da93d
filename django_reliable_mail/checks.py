"""System checks: every problem conf.py finds, as ``reliable_mail.E0xx`` / ``W0xx``."""

from __future__ import annotations

from typing import Any

from django.core import checks

from .conf import validate


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    _config, problems = validate()
    return [
        (checks.Warning if p.warning else checks.Error)(p.message, hint=p.hint or None, id=p.id)
        for p in problems
    ]


_Q_CLUSTER_EXAMPLE = (
    "e.g. Q_CLUSTER = {'timeout': 120, 'retry': 180, 'max_attempts': 1, "
    "'ack_failures': True, 'catch_up': False, ...}"
)


def check_q_cluster(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn about django-q2 settings that turn a slow or failed task into a repeated send."""
    from django.conf import settings

    config, _ = validate()
    if config is None or config.mode != "queue":
        return []
    q = getattr(settings, "Q_CLUSTER", {}) or {}
    if not isinstance(q, dict):
        return []  # django-q2 reports its own setting's shape
    found = []
    timeout, retry = q.get("timeout"), q.get("retry", 60)
    if timeout is None:
        found.append(
            checks.Warning(
                "Q_CLUSTER['timeout'] is not set: a delivery task running longer than "
                f"Q_CLUSTER['retry'] ({retry} s) is handed to a second worker.",
                hint=_Q_CLUSTER_EXAMPLE,
                id="reliable_mail.W010",
            )
        )
    elif _is_number(retry) and _is_number(timeout) and retry <= timeout:
        found.append(
            checks.Warning(
                f"Q_CLUSTER['retry'] ({retry}) is not greater than "
                f"Q_CLUSTER['timeout'] ({timeout}): a task still running is redelivered "
                "to another worker.",
                hint=_Q_CLUSTER_EXAMPLE,
                id="reliable_mail.W011",
            )
        )
    if q.get("max_attempts", 0) == 0:
        found.append(
            checks.Warning(
                "Q_CLUSTER['max_attempts'] is 0 (unlimited): a failing delivery task is retried "
                "forever by the broker. Our own retries live in the database; set it to 1.",
                hint=_Q_CLUSTER_EXAMPLE,
                id="reliable_mail.W012",
            )
        )
    if q.get("catch_up", True):
        found.append(
            checks.Warning(
                "Q_CLUSTER['catch_up'] is on: after downtime the dispatcher schedule replays every "
                "missed run at once.",
                hint=_Q_CLUSTER_EXAMPLE,
                id="reliable_mail.W013",
            )
        )
    if not q.get("ack_failures", False):
        found.append(
            checks.Warning(
                "Q_CLUSTER['ack_failures'] is off: a failed delivery task stays on the broker and "
                "is delivered again.",
                hint=_Q_CLUSTER_EXAMPLE,
                id="reliable_mail.W014",
            )
        )
    return found


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_sqlite_locking(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Queue mode on an SQLite file: the web process and the workers write to it at once."""
    from django.db import connections, router

    from .models import OutboundMessage

    config, _ = validate()
    if config is None or config.mode != "queue":
        return []
    alias = router.db_for_write(OutboundMessage)
    connection = connections[alias]
    if connection.vendor != "sqlite" or connection.is_in_memory_db():
        return []
    mode = (connection.settings_dict.get("OPTIONS") or {}).get("transaction_mode")
    if isinstance(mode, str) and mode.upper() in ("IMMEDIATE", "EXCLUSIVE"):
        return []
    return [
        checks.Warning(
            f"DATABASES[{alias!r}] is SQLite without OPTIONS['transaction_mode'] = "
            "'IMMEDIATE': a transaction of yours that reads first and then calls send_mail() "
            "fails with 'database is locked' whenever a worker is writing at that moment "
            "(the app's own transactions already wait their turn).",
            hint=f"DATABASES[{alias!r}]['OPTIONS'] = {{'transaction_mode': 'IMMEDIATE'}}",
            id="reliable_mail.W015",
        )
    ]


def check_broker(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Queue mode needs a broker django-q2 can use: without one, every ``send_mail()``
    would be refused (the backend stores nothing it could not wake a worker for)."""
    from .tasks import broker_problem

    config, _ = validate()
    if config is None:
        return []
    problem = broker_problem()
    if problem is None:
        return []
    reason, hint = problem
    if config.mode == "queue":
        return [checks.Error(queue_refusal(reason), hint=hint, id="reliable_mail.E025")]
    return [
        checks.Warning(
            f"{reason}: no django-q2 cluster can run. First attempts are made in the calling "
            "process (MODE 'immediate'); retries wait for a worker: a django-q2 cluster, or "
            "manage.py reliable_mail_send --loop.",
            hint=hint,
            id="reliable_mail.W017",
        )
    ]


def queue_refusal(reason: str) -> str:
    """E025's message, which the backend raises too when asked to store a message."""
    return (
        f"{reason}: queueing a task would fail after the message was stored, so in "
        "MODE 'queue' the backend stores nothing."
    )


def check_stalled_queue(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Due messages nobody claims: no worker runs (a check that reads the database, so it
    runs where Django asks for database checks: ``check --database default``, ``migrate``)."""
    if not databases:
        return []
    from django.db import DatabaseError

    from .health import stalled_queue

    config, _ = validate()
    if config is None:
        return []
    try:
        stall = stalled_queue(config=config)
    except DatabaseError:  # not migrated yet: nothing can be queued either
        return []
    if stall is None:
        return []
    return [checks.Warning(str(stall), hint=stall.hint, id="reliable_mail.W016")]
