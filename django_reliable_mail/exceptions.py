"""The errors django-reliable-mail raises.

::

    ReliableMailError
     ├── ReliableMailConfigError   (also ImproperlyConfigured)
     │    └── UnknownProviderError
     └── InvalidMessageError       (also ValueError)

Configuration errors are a separate branch under Django's ``ImproperlyConfigured`` on
purpose: code that already catches that (deployment checks, management commands) treats
ours the same way, while a bad *message* is the caller's data error, not a setup problem.
Delivery failures are never raised: they are recorded as attempts.
"""

from django.core.exceptions import ImproperlyConfigured


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
    """A message cannot be queued as it is (no recipients, bad address, bad option)."""
