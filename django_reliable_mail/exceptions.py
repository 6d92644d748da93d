"""The errors django-reliable-mail raises.

::

    ReliableMailError
     ├── ReliableMailConfigError   (also ImproperlyConfigured)
     │    ├── UnknownProviderError
     │    └── TLSConflictError     (also ValueError)
     ├── InvalidMessageError       (also ValueError)
     │    └── HeaderInjectionError (also django.core.mail.BadHeaderError)
     └── DeliveryError             (each also the smtplib/ssl exception Django would raise)
          ├── RecipientsRefused    smtplib.SMTPRecipientsRefused
          ├── SenderRefused        smtplib.SMTPSenderRefused
          ├── DataRefused          smtplib.SMTPDataError
          ├── ReplyRefused         smtplib.SMTPResponseException
          ├── AuthenticationFailed smtplib.SMTPAuthenticationError
          ├── NotSupported         smtplib.SMTPNotSupportedError
          ├── SetupFailed          smtplib.SMTPException
          └── CertificateRejected  ssl.SSLCertVerificationError

Configuration errors are a separate branch under Django's ``ImproperlyConfigured`` on
purpose: code that already catches that (deployment checks, management commands) treats
ours the same way, while a bad *message* is the caller's data error, not a setup problem.
A header injection attempt is both: Django's documented ``except BadHeaderError:`` catches
it, and so does ``except InvalidMessageError:``.

Delivery failures are recorded as attempts. A :class:`DeliveryError` is raised only where
Django's SMTP backend would raise and nothing is lost by it: from ``send_messages()``
called outside a transaction without ``fail_silently``, when the first attempt, made in
the calling process, ended in a permanent failure or a configuration error (the message is
stored, failed or waiting; ``.outbound_message`` is its row), and from ``open()``.
Transient failures are never raised: the message is retried.
"""

import smtplib
import ssl
from typing import Any

# Not ``django.core.mail.BadHeaderError``: on Django 6.0+ importing that name warns (it is
# deprecated there and is ``ValueError`` itself); ``message.BadHeaderError`` is the same
# object on every version, without the warning.
from django.core.exceptions import ImproperlyConfigured
from django.core.mail.message import BadHeaderError


class ReliableMailError(Exception):
    """Base class of every error raised by django-reliable-mail."""


class ReliableMailConfigError(ReliableMailError, ImproperlyConfigured):
    """A setting is wrong. The message names the setting, the key and the value."""

    def __init__(self, message: str, *, problems: list | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class UnknownProviderError(ReliableMailConfigError):
    """A message or an option names a provider that is not configured."""


class TLSConflictError(ReliableMailConfigError, ValueError):
    """``EMAIL_USE_TLS`` and ``EMAIL_USE_SSL`` (or ``use_tls`` and ``use_ssl``) are both on:
    a ``ValueError``, as Django's SMTP backend raises, and a configuration error."""


class InvalidMessageError(ReliableMailError, ValueError):
    """A message cannot be queued as it is (bad address, bad header, bad option)."""


class HeaderInjectionError(InvalidMessageError, BadHeaderError):
    """A header name or value could start a header of its own: a line break in the subject,
    an address or an extra header's value, or anything but RFC 5322 ``ftext`` in an extra
    header's name."""


class DeliveryError(ReliableMailError):
    """A first attempt made in the calling process failed for good, or a connection could
    not be opened. Each subclass is also the exception Django's SMTP backend would raise."""

    #: The stored message (an ``OutboundMessage``), None for ``open()``.
    outbound_message: Any = None


class RecipientsRefused(DeliveryError, smtplib.SMTPRecipientsRefused):
    """Every recipient was refused (``.recipients``: address → (code, reply text))."""


class SenderRefused(DeliveryError, smtplib.SMTPSenderRefused):
    """MAIL FROM was refused."""


class DataRefused(DeliveryError, smtplib.SMTPDataError):
    """DATA or the message itself was refused."""


class ReplyRefused(DeliveryError, smtplib.SMTPResponseException):
    """Another permanent reply."""


class AuthenticationFailed(DeliveryError, smtplib.SMTPAuthenticationError):
    """The server refused the credentials."""


class NotSupported(DeliveryError, smtplib.SMTPNotSupportedError):
    """Something required is not offered (STARTTLS, AUTH, SMTPUTF8, REQUIRETLS, a size)."""


class SetupFailed(DeliveryError, smtplib.SMTPException):
    """The connection could not be set up as configured (certificate files, for instance)."""


class CertificateRejected(DeliveryError, ssl.SSLCertVerificationError):
    """The server's TLS certificate could not be verified."""
