"""django-q2 entry points. They take ids and names only: the database is the source of truth.

Every task is safe to run twice (broker redelivery, a retried task): claiming is a
compare-and-set on the message row, so a message already claimed or finished is skipped.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.db import connections
from django.db.models import Count
from django.utils import timezone

from . import delivery
from .transactions import writing

logger = logging.getLogger(__name__)

#: The django-q2 Schedule that runs :func:`dispatch`; created by migration 0003.
DISPATCH_SCHEDULE_NAME = "django_reliable_mail.dispatch"
#: Message ids per ``deliver`` task, and messages per ``deliver_due`` task of the dispatcher.
WAKE_CHUNK = 200
#: Messages a streaming delivery task claims at a time. Larger claims cost fewer statements
#: per message; the stream holds at most about one claim in memory.
STREAM_BATCH = 500
#: How long one delivery task keeps claiming further batches over its open connections
#: (well inside the recommended Q_CLUSTER timeout of 120 s).
STREAM_SECONDS = 30


def deliver(message_ids: list[int] | int) -> str:
    """Deliver these messages if they are still due."""
    ids = [message_ids] if isinstance(message_ids, int) else list(message_ids)
    summary = delivery.deliver_messages(ids)
    return f"{summary.attempts} attempt(s), {summary.sent} sent"


def deliver_due(provider: str | None = None, limit: int = 200) -> str:
    """Deliver what is due for one provider (or all), one batch."""
    summary = delivery.deliver_due(provider=provider, limit=limit)
    return f"{summary.attempts} attempt(s), {summary.sent} sent"


def dispatch() -> str:
    """The periodic safety net: return expired leases, wake due retries and lost wake-ups."""
    from django_q.tasks import async_task

    recovered = delivery.recover_expired_leases()
    due = (
        delivery.due_messages(now=timezone.now())
        .values("provider")
        .annotate(n=Count("id"))
        .order_by()
    )
    woken = 0
    for row in due:
        for _ in range(0, row["n"], WAKE_CHUNK):
            async_task(
                "django_reliable_mail.tasks.deliver_due",
                row["provider"],
                WAKE_CHUNK,
                group="reliable_mail",
            )
            woken += 1
    return f"recovered {recovered} expired lease(s), queued {woken} delivery task(s)"


def wake_in_transaction() -> bool:
    """True when the wake-up can be queued inside the enqueueing transaction itself.

    django-q2's ORM broker on our own database makes the task row part of the caller's
    transaction: a rollback removes it with the messages, a commit publishes both at once,
    and one commit is saved per send. Any other broker (Redis…) must be told after the
    commit, and a synchronous cluster (tests) would send before it.
    """
    from django.db import router
    from django_q.conf import Conf

    from .models import OutboundMessage

    return bool(Conf.ORM) and not Conf.SYNC and Conf.ORM == router.db_for_write(OutboundMessage)


#: django-q2's broker modules, in the order ``django_q.brokers.get_broker`` chooses them,
#: with the ``Q_CLUSTER`` key that selects each and the client package each one imports.
_BROKERS = (
    ("iron_mq", "django_q.brokers.ironmq", "iron-mq"),
    ("sqs", "django_q.brokers.aws_sqs", "boto3"),
    ("orm", "django_q.brokers.orm", ""),
    ("mongo", "django_q.brokers.mongo", "pymongo"),
)
_REDIS = ("redis", "django_q.brokers.redis_broker", "redis")


def broker_problem() -> tuple[str, str] | None:
    """Why django-q2 could not queue a task here (the reason, a hint), or None.

    Read from ``settings.Q_CLUSTER`` itself (django-q2 freezes its own copy at import).
    Without ``Q_CLUSTER`` django-q2 falls back to Redis on localhost, which is no
    configuration anyone chose: that is a problem too. The broker's module is imported,
    as ``async_task()`` would import it, so a missing client is found before any message
    is stored, not after.
    """
    q = getattr(settings, "Q_CLUSTER", None)
    if not isinstance(q, dict) or not q:
        return (
            "Q_CLUSTER is not set (django-q2 would fall back to a Redis broker on localhost)",
            "Use the database as the broker: Q_CLUSTER = {'name': 'mail', 'orm': 'default', "
            "'timeout': 120, 'retry': 180, 'max_attempts': 1, 'ack_failures': True, "
            "'catch_up': False}, and run manage.py qcluster.",
        )
    if q.get("broker_class"):
        module, package, key = str(q["broker_class"]).rpartition(".")[0], "", "broker_class"
    else:
        key, module, package = next(
            (b for b in _BROKERS if q.get(b[0]) and (b[0] != "sqs" or isinstance(q[b[0]], dict))),
            _REDIS,
        )
    if key == "orm" and q["orm"] not in settings.DATABASES:
        return (
            f"Q_CLUSTER['orm'] is {q['orm']!r}, which is not in DATABASES",
            f"Use one of {', '.join(map(repr, settings.DATABASES))}.",
        )
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or whatever a broken client raises on import
        chosen = f"Q_CLUSTER[{key!r}]" if key != "redis" else "Q_CLUSTER (no other broker set)"
        return (
            f"{chosen} selects django-q2's {module.rpartition('.')[2]} broker, which cannot be "
            f"imported ({type(exc).__name__}: {exc})",
            f"pip install {package}, or set Q_CLUSTER['orm'] = 'default' to use the database."
            if package
            else "Check the broker's dotted path.",
        )
    return None


def wake(message_ids: Iterable[int]) -> None:
    """Ask the queue to deliver these messages; called after the enqueueing commit.

    Never raises: the messages are committed, and a wake-up that cannot be queued now is
    made up by the dispatcher (or ``reliable_mail_send``), which sends whatever is due.
    """
    ids = list(message_ids)
    try:
        _queue_deliver_tasks(ids)
    except Exception:
        logger.exception(
            "message(s) %s are stored but no worker could be woken; they go out with the "
            "next dispatcher run or reliable_mail_send",
            ids,
        )


def _queue_deliver_tasks(ids: list[int]) -> None:
    from django_q.brokers import get_broker
    from django_q.tasks import async_task

    # Inside an atomic block django-q2's ORM broker does not close and reopen the database
    # connection around each task it queues (it does in autocommit mode), which would
    # otherwise double the cost of every send_mail().
    with writing(savepoint=False):
        broker = get_broker()
        for start in range(0, len(ids), WAKE_CHUNK):
            async_task(
                "django_reliable_mail.tasks.deliver",
                ids[start : start + WAKE_CHUNK],
                group="reliable_mail",
                broker=broker,
            )


class _RememberingBroker:
    """A broker whose ``enqueue`` remembers the row it created (django-q2 returns only
    the task id)."""

    def __init__(self, broker: Any) -> None:
        self._broker = broker
        self.row: tuple[int, str] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def enqueue(self, task: str) -> Any:
        row_id = self._broker.enqueue(task)
        self.row = (row_id, task)
        return row_id


#: The ORM-broker row (id, payload) of the last coalesced wake-up this process queued, per
#: database. The payload tells our row from a later one that reuses its id (SQLite does).
_pending_wake: dict[str, tuple[int, str]] = {}


def wake_pending_in_transaction() -> None:
    """Wake a worker for everything due, from inside the enqueueing transaction (ORM broker).

    A burst of ``send_mail()`` calls needs one wake-up, not one task per message: if the
    wake-up this process queued last is still waiting in the broker, it will deliver the new
    message too, and nothing is added. Its row is locked (``SELECT … FOR UPDATE``) until
    our commit, so a worker cannot take it in between and run before our message is visible;
    a row already taken has its lock time in the future and does not count.
    """
    check = pending_wake_check()
    if check is not None:
        sql, params, payload = check
        alias = _wake_alias()
        with connections[alias].cursor() as cursor:
            cursor.execute(sql, params)
            found = cursor.fetchone()
        if found is not None and found[0] == payload:
            return
    queue_wake_in_transaction()


def _wake_alias() -> str:
    from django.db import router

    from .models import OutboundMessage

    return router.db_for_write(OutboundMessage)


def pending_wake_check() -> tuple[str, list[Any], str] | None:
    """The query that finds (and locks) the wake-up this process queued last, if it is
    still waiting: ``(sql with %s marks, params, the payload it must return)``.

    Plain SQL: this runs inside every ``send_mail()``, and building the query through the
    ORM costs more than running it. None when this process has queued no wake-up yet.
    """
    alias = _wake_alias()
    row = _pending_wake.get(alias)
    if row is None:
        return None
    row_id, payload = row
    connection = connections[alias]
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    return _pending_wake_sql(alias), [row_id, now], payload


@lru_cache(maxsize=8)
def _pending_wake_sql(alias: str) -> str:
    """The statement of :func:`pending_wake_check`, built once per database."""
    from django_q.models import OrmQ

    connection = connections[alias]
    quote = connection.ops.quote_name
    meta = OrmQ._meta
    pk, lock = quote(meta.pk.column), quote(meta.get_field("lock").column)
    sql = (
        f"SELECT {quote(meta.get_field('payload').column)} FROM {quote(meta.db_table)} "
        f"WHERE {pk} = %s AND {lock} <= %s"
    )
    if connection.features.has_select_for_update:
        sql += " FOR UPDATE"
    return sql


def queue_wake_in_transaction() -> None:
    """Queue a new coalesced wake-up in the current transaction and remember its row."""
    from django_q.brokers import get_broker
    from django_q.tasks import async_task

    broker = _RememberingBroker(get_broker())
    async_task("django_reliable_mail.tasks.deliver_pending", group="reliable_mail", broker=broker)
    if broker.row is not None:
        _pending_wake[_wake_alias()] = broker.row


def deliver_pending(limit: int = STREAM_BATCH) -> str:
    """The coalesced wake-up: deliver what is due, a batch at a time.

    When more than one batch is waiting, another wake-up is queued first, so a second
    worker can share the queue while this one sends. A provider's batch is streamed (the
    next batch claimed while the connections keep sending) for up to ``STREAM_SECONDS``.
    """
    from django_q.tasks import async_task

    if delivery.due_messages(now=timezone.now()).count() > limit:
        async_task("django_reliable_mail.tasks.deliver_pending", limit, group="reliable_mail")
    summary = delivery.deliver_due(limit=limit, keep_going_seconds=STREAM_SECONDS)
    return f"{summary.attempts} attempt(s), {summary.sent} sent"
