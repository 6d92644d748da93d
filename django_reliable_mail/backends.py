"""``EmailBackend``: validate, persist, then send inline or wake the worker.

Works as ``EMAIL_BACKEND = "django_reliable_mail.backends.EmailBackend"`` and as a Django
6.1 ``MAILERS`` entry, whose OPTIONS are ``provider`` plus any provider key in lower case
(``{"provider": "strato", "disable_extensions": ["REQUIRETLS"]}``) and Django's SMTP
option names ``host``, ``port``, ``username``, ``password``, ``use_tls``, ``use_ssl``,
``timeout``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import django
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.db import transaction

from . import delivery, tasks
from .conf import DJANGO_OPTION_ALIASES, PROVIDER_DEFAULTS, Config, config_with_options
from .exceptions import ReliableMailConfigError
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
        # are not given: None means "not set here", never "no credentials".
        options = {k: v for k, v in options.items() if v is not None}
        if django.VERSION >= (6, 1):
            # Django reports unknown OPTIONS itself (InvalidMailer, prefixed with the alias).
            if fail_silently is not _NOT_GIVEN:
                kwargs["fail_silently"] = fail_silently
            super().__init__(alias=alias, **kwargs)
        else:
            kwargs.pop("_ignore_unknown_kwargs", None)
            if kwargs:
                raise ReliableMailConfigError(
                    "EmailBackend got unknown option(s) "
                    + ", ".join(map(repr, kwargs))
                    + "; options are 'provider' and the provider keys in lower case."
                )
            super().__init__(fail_silently=fail_silently is True)
        self.fail_silently = fail_silently is True
        # Built now, so a bad setting fails here with a clear message, not at send time.
        self.config, self.provider = config_with_options(provider, options, alias=alias)
        self._provider_given = provider is not None or bool(options)
        # Overrides from a MAILERS entry can be rebuilt by the worker from the same entry;
        # keyword options from a direct call (credentials included) cannot, and are never
        # stored, so they only work when sending inline.
        self.mailer = alias if options and alias else None
        if options and not alias and self.config.mode != "immediate":
            raise ReliableMailConfigError(
                "EmailBackend options "
                + ", ".join(map(repr, options))
                + " cannot be used with RELIABLE_MAIL['MODE'] 'queue': the worker would not "
                "see them. Put them in RELIABLE_MAIL['PROVIDERS'] or a MAILERS entry."
            )

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        """Store every message, then deliver after commit. Returns how many were stored.

        A message whose idempotency key was already stored counts: it is on its way. A
        message without recipients is skipped and not counted, as Django's SMTP backend
        does. Any other invalid message raises :class:`InvalidMessageError` (a header
        injection :class:`HeaderInjectionError`, Django's ``BadHeaderError``) and stores
        none of them, or with ``fail_silently`` is skipped and logged; see
        :func:`delivery.validate`.
        """
        if not email_messages:
            return 0
        prepared = delivery.validate(
            list(email_messages),
            config=self.config,
            provider=self.provider if self._provider_given else None,
            fail_silently=self.fail_silently,
        )
        if not prepared:
            return 0
        queue_here = self.config.mode == "queue" and tasks.wake_in_transaction()
        if queue_here and delivery.enqueues_in_one_statement(prepared):
            _, woken = delivery.enqueue_in_one_statement(
                prepared[0], mailer=self.mailer, wake_check=tasks.pending_wake_check()
            )
            if not woken:
                # (Outside a transaction the message is already committed: a crash right
                # here leaves it to the dispatcher, which wakes lost messages.)
                with writing(savepoint=False):
                    tasks.queue_wake_in_transaction()
            return 1
        with writing():
            rows = delivery.enqueue(prepared, mailer=self.mailer)
            ids = [row.pk for row in rows]
            if ids and queue_here:
                # Commits (or rolls back) together with the messages.
                tasks.wake_pending_in_transaction()
        if ids and not queue_here:
            if self.config.mode == "immediate":
                config = self.config
                transaction.on_commit(lambda: _deliver_now(ids, config=config))
            else:
                transaction.on_commit(lambda: tasks.wake(ids))
        return len(prepared)


def _deliver_now(ids: list[int], *, config: Config) -> None:
    """Immediate mode's first attempt, after the commit. Whatever a server or the database
    does then never reaches the ``send_mail()`` caller: the messages are stored, and what
    this attempt could not do, the dispatcher does (due messages, expired leases)."""
    try:
        delivery.deliver_messages(ids, config=config)
    except Exception:
        logger.exception("sending message(s) %s now failed; they wait in the queue", ids)
