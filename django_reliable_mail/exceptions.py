"""The errors django-reliable-mail raises.

::

    ReliableMailError
     ├── ReliableMailConfigError   (also ImproperlyConfigured)
     │    └── UnknownProviderError
     └── InvalidMessageError       (also ValueError)
          └── HeaderInjectionError (also django.core.mail.BadHeaderError)

Configuration errors are a separate branch under Django's ``ImproperlyConfigured`` on
purpose: code that already catches that (deployment checks, management commands) treats
ours the same way, while a bad *message* is the caller's data error, not a setup problem.
A header injection attempt is both: Django's documented ``except BadHeaderError:`` catches
it, and so does ``except InvalidMessageError:``. Delivery failures are never raised: they
are recorded as attempts.
"""

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


class InvalidMessageError(ReliableMailError, ValueError):
    """A message cannot be queued as it is (bad address, bad header, bad option)."""


class HeaderInjectionError(InvalidMessageError, BadHeaderError):
    """A header name or value could start a header of its own: a line break in the subject,
    an address or an extra header's value, or anything but RFC 5322 ``ftext`` in an extra
    header's name."""
