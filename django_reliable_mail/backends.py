"""``EmailBackend``: validate, persist, then send in this process or wake the worker.

Works as ``EMAIL_BACKEND = "django_reliable_mail.backends.EmailBackend"`` and as a Django
6.1 ``MAILERS`` entry. It takes Django's SMTP backend arguments (``host``, ``port``,
``username``, ``password``, ``use_tls``, ``use_ssl``, ``timeout``, ``ssl_certfile``,
``ssl_keyfile``) with Django's meaning, ``provider``, and any provider key in lower case
(``{"provider": "strato", "disable_extensions": ["REQUIRETLS"]}``).

Invariant: a message is stored before anything is sent, and nothing that can fail after
the commit reaches the caller as an exception; what the caller is told (an invalid message,
a missing broker, a permanent failure of a first attempt made in its own call) it is told
before the commit or instead of nothing being retried. See ``docs/django-differences.rst``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import django
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.db import router, transaction

from . import delivery, tasks
from .caller_errors import error_for_attempt, error_for_open
from .conf import (
    DJANGO_OPTION_ALIASES,
    PROVIDER_DEFAULTS,
    SECRET_ARGUMENTS,
    config_with_options,
    uses_mailer_defaults,
)
from .exceptions import DeliveryError, ReliableMailConfigError
from .models import DeliveryAttempt, OutboundMessage
from .smtp.keeper import OpenFailed, SessionKeeper
from .status import ATTRIBUTE as STATUS_ATTRIBUTE
from .status import SendStatus, status_of
from .transactions import writing

logger = logging.getLogger(__name__)
_NOT_GIVEN: Any = object()
_OPTION_NAMES = {k.lower() for k in PROVIDER_DEFAULTS} | DJANGO_OPTION_ALIASES


class EmailBackend(BaseEmailBackend):
    def __init__(
        self,
        fail_silently: bool = _NOT_GIVEN,
        *,
        alias: str | None = None,
        provider: str | None = None,
        **kwargs: Any,
    ) -> None:
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in _OPTION_NAMES}
        # send_mail() passes username=None, password=None when its auth_user/auth_password
        # are not given: None means "not set here", as in Django's backend.
        options = {k: v for k, v in options.items() if v is not None}
        if django.VERSION >= (6, 1):
            _as_django_61_builds(alias, options, provider=provider)
            # Django reports unknown OPTIONS itself (InvalidMailer, prefixed with the alias).
            # fail_silently is ours to take, as Django's SMTP backend takes it.
            super().__init__(alias=alias, **kwargs)
        else:
            kwargs.pop("_ignore_unknown_kwargs", None)
            if kwargs:
                raise ReliableMailConfigError(
                    "EmailBackend got unknown option(s) "
                    + ", ".join(map(repr, kwargs))
                    + "; options are Django's SMTP backend arguments, 'provider' and the "
                    "provider keys in lower case."
                )
            super().__init__(fail_silently=fail_silently is True)
        self.fail_silently = fail_silently is True
        # Built now, so a bad setting fails here with a clear message, not at send time.
        self.config, self.provider = config_with_options(provider, options, alias=alias)
        self._provider_given = provider is not None or bool(options)
        # A MAILERS entry's options the worker rebuilds from the same entry; arguments of a
        # direct call are stored with each message instead, secrets excepted.
        self.mailer = alias if options and alias else None
        self._arguments, self._secret_given = _arguments_to_store(options, alias=alias)
        if self._secret_given and self.config.mode == "queue":
            raise self._secrets_for_a_worker(options)
        self._sessions: SessionKeeper | None = None
        #: Django's backend has it: the open connection (here the kept session's keeper).
        self.connection: SessionKeeper | None = None
        self._describe_as_django()

    def _secrets_for_a_worker(self, options: dict[str, Any]) -> ReliableMailConfigError:
        return ReliableMailConfigError(
            "EmailBackend got "
            + " and ".join(repr(k) for k in sorted(options) if k in SECRET_ARGUMENTS)
            + ", which is never stored, so a worker (RELIABLE_MAIL['MODE'] 'queue') could "
            "not use it. Configure the credentials instead: "
            f"{self.config.source}['PROVIDERS'][{self.provider!r}]['PASSWORD'] (or "
            "EMAIL_HOST_PASSWORD, or a MAILERS entry's OPTIONS)."
        )

    def _describe_as_django(self) -> None:
        """The attributes Django's SMTP backend has, read from the provider in use."""
        chosen = self.config.provider(self.provider)
        unset = None if uses_mailer_defaults(getattr(self, "alias", None)) else ""
        self.host, self.port = chosen.host, chosen.port
        self.username = chosen.username or unset
        self.password = chosen.password or unset
        self.use_tls, self.use_ssl = chosen.tls == "starttls", chosen.tls == "implicit"
        self.timeout = chosen.timeout
        self.ssl_certfile, self.ssl_keyfile = chosen.client_certfile, chosen.client_keyfile

    # -- Django's connection API ------------------------------------------------------

    def open(self) -> bool | None:
        """Immediate mode: open one SMTP session (connect, TLS, EHLO, AUTH) that every
        ``send_messages()`` until :meth:`close` reuses, raising what Django's backend
        would. True when a session was opened, False when one already is (or in queue
        mode, where the worker holds the connections)."""
        if self.config.mode != "immediate" or self._sessions is not None:
            return False
        keeper = SessionKeeper()
        try:
            keeper.open(self._server_settings())
        except OpenFailed as failed:
            keeper.close()
            if self.fail_silently:
                return None
            raise error_for_open(failed) from failed
        except BaseException:
            keeper.close()
            raise
        self._sessions = self.connection = keeper
        return True

    def close(self) -> None:
        """QUIT the kept session, if any; never raises."""
        keeper, self._sessions = self._sessions, None
        self.connection = None
        if keeper is not None:
            keeper.close()

    def _server_settings(self) -> Any:
        config = self.config
        return config.provider(self.provider).server_settings(
            transcript_max_chars=config.transcript_max_chars,
            record=config.transcripts != "never",
        )

    # -- sending --------------------------------------------------------------------------

    def send_messages(self, email_messages: Iterable[EmailMessage]) -> int:
        """Store every message, then deliver after commit. Returns how many were stored.

        A message whose idempotency key was already stored counts: it is on its way. A
        message without recipients is skipped and not counted, as Django's SMTP backend
        does. Any other invalid message raises :class:`InvalidMessageError` (a header
        injection :class:`HeaderInjectionError`, Django's ``BadHeaderError``) and stores
        none of them, or with ``fail_silently`` is skipped and logged; see
        :func:`delivery.validate`. Each stored message gets ``reliable_mail_status``.
        """
        messages = list(email_messages or ())  # Django accepts any iterable
        if not messages:
            return 0
        for message in messages:
            if status_of(message) is not None:
                setattr(message, STATUS_ATTRIBUTE, None)
        prepared = delivery.validate(
            messages,
            config=self.config,
            provider=self.provider if self._provider_given else None,
            fail_silently=self.fail_silently,
        )
        if not prepared:
            return 0
        if self.config.mode == "immediate":
            self._store_and_send(prepared)
        else:
            self._store_and_wake(prepared)
        return len(prepared)

    def _store_and_wake(self, prepared: list[Any]) -> None:
        """Queue mode: store, and wake a worker (in the transaction, or after it)."""
        problem = tasks.broker_problem()
        if problem is not None:  # refused before anything is stored: nothing half-done
            from .checks import queue_refusal

            raise ReliableMailConfigError(f"{queue_refusal(problem[0])} {problem[1]}")
        queue_here = tasks.wake_in_transaction()
        if queue_here and delivery.enqueues_in_one_statement(prepared):
            _, woken = delivery.enqueue_in_one_statement(
                prepared[0],
                mailer=self.mailer,
                wake_check=tasks.pending_wake_check(),
                arguments=self._arguments,
            )
            if not woken:
                # (Outside a transaction the message is already committed: a crash right
                # here leaves it to the dispatcher, which wakes lost messages.)
                with writing(savepoint=False):
                    tasks.queue_wake_in_transaction()
            return
        with writing():
            rows = delivery.enqueue(prepared, mailer=self.mailer, arguments=self._arguments)
            ids = [row.pk for row in rows]
            if ids and queue_here:
                # Commits (or rolls back) together with the messages.
                tasks.wake_pending_in_transaction()
        if ids and not queue_here:
            transaction.on_commit(lambda: tasks.wake(ids))

    def _store_and_send(self, prepared: list[Any]) -> None:
        """Immediate mode: store, then make the first attempt in this process after the
        commit (at once outside a transaction, where a failure for good is raised)."""
        alias = router.db_for_write(OutboundMessage)
        in_transaction = transaction.get_connection(alias).in_atomic_block
        if self._secret_given:
            logger.warning(
                "credentials given to the backend are used for the first attempt only: they "
                "are never stored, so retries use %s['PROVIDERS'][%r]",
                self.config.source,
                self.provider,
            )
        with writing():
            rows = delivery.enqueue(prepared, mailer=self.mailer, arguments=self._arguments)
        handles = {h.id: h for p in prepared if (h := status_of(p.message)) and not h.duplicate}
        ids = [row.pk for row in rows]
        if not ids:
            return
        if in_transaction:
            transaction.on_commit(lambda: self._first_attempt(ids, handles), using=alias)
            return
        error = self._first_attempt(ids, handles)
        if error is not None and not self.fail_silently:
            raise error

    def _first_attempt(
        self, ids: list[int], handles: dict[int, SendStatus]
    ) -> DeliveryError | None:
        """Send these stored messages now, in order, over the kept session (or a new one);
        bring their handles up to date; return the first failure for good.

        Never raises: whatever a server or the database does here, the messages are stored,
        and what this attempt could not do the worker does (due messages, expired leases).
        """
        try:
            delivery.deliver_messages(
                ids, config=self.config, in_order=True, sessions=self._sessions
            )
            return _first_failure(ids, handles)
        except Exception:
            logger.exception("sending message(s) %s now failed; they wait in the queue", ids)
            return None


def _as_django_61_builds(
    alias: str | None, options: dict[str, Any], *, provider: str | None
) -> None:
    """Django 6.1's rules for building an SMTP backend: a warning when built directly (the
    ``EMAIL_*`` path is deprecated), and a mailer's OPTIONS checked as Django checks them."""
    from django.core.mail import InvalidMailer
    from django.utils.deprecation import RemovedInDjango2028Warning, warn_about_external_use

    if alias is None:
        warn_about_external_use(
            "Directly creating EmailBackend instances is deprecated. Use mail.mailers instead.",
            RemovedInDjango2028Warning,
        )
        return
    if options.get("use_ssl") and options.get("use_tls"):
        raise InvalidMailer(
            "The 'use_ssl' and 'use_tls' OPTIONS are incompatible. Set at most one of them "
            "to True.",
            alias=alias,
        )
    if uses_mailer_defaults(alias) and "host" not in options and provider is None:
        raise InvalidMailer("OPTIONS must define 'host'.", alias=alias)


def _arguments_to_store(
    options: dict[str, Any], *, alias: str | None
) -> tuple[dict[str, Any], bool]:
    """The backend arguments stored with each message (for the worker's retries), and
    whether a secret was given (a non-empty password or token: never stored).

    With a secret, the credentials stay out of the stored arguments altogether: a retry
    uses the provider's own user name with its own password, never a mix.
    """
    if alias:
        return {}, False
    secret = any(options.get(key) for key in SECRET_ARGUMENTS)
    if secret:
        leave_out = SECRET_ARGUMENTS | {"username"}
        return {k: v for k, v in options.items() if k not in leave_out}, True
    return dict(options), False  # empty credentials included: they mean "no AUTH"


def _first_failure(ids: list[int], handles: dict[int, SendStatus]) -> DeliveryError | None:
    """Each message's status after its first attempt; the first failure for good."""
    rows = {row.pk: row for row in OutboundMessage.objects.filter(pk__in=ids)}
    for pk, handle in handles.items():
        if pk in rows:
            handle.status = rows[pk].status
    failed = [pk for pk in ids if pk in rows and rows[pk].status == OutboundMessage.Status.FAILED]
    waiting = [pk for pk in ids if pk in rows and rows[pk].status != OutboundMessage.Status.SENT]
    if not waiting:
        return None
    attempts = {
        a.message_id: a
        for a in DeliveryAttempt.objects.filter(message_id__in=waiting).order_by("number")
    }
    for pk in sorted(waiting, key=lambda pk: (pk not in failed, ids.index(pk))):
        attempt = attempts.get(pk)
        if attempt is not None:
            error = error_for_attempt(rows[pk], attempt)
            if error is not None:
                return error
    return None
