"""Testing with django-reliable-mail.

For your own tests (Django only, no extra package):

- :class:`EmailBackend` (``django_reliable_mail.testing.EmailBackend``): the real backend's
  checks, recorded in :data:`outbox` instead of stored and sent;
- :data:`outbox`: what it recorded, with ``assert_sent()``, ``assert_one()``,
  ``assert_nothing_sent()`` and ``matching()``;
- :class:`DiscoverRunner`: Django's test runner with the test backend where it would put
  locmem; :func:`settings_for_test_backend` for ``override_settings``;
- the ``reliable_mail_outbox`` pytest fixture (``pytest_plugin``, loaded automatically).

Loopback SMTP servers (need the ``demo`` or ``test`` extra: aiosmtpd and trustme):
:class:`LoopbackSMTPServer`, :func:`make_certificate_authority`, :func:`free_port`, in
``servers``, imported from here on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Name → the module that defines it, imported on first use: nothing here needs Django's
#: apps to be ready (the pytest plugin loads before they are), nor aiosmtpd unless a
#: server is used.
_HOMES = {
    **dict.fromkeys(("EmailBackend", "Outbox", "RecordedMessage", "outbox"), "backend"),
    **dict.fromkeys(("TEST_BACKEND", "DiscoverRunner", "settings_for_test_backend"), "runner"),
    **dict.fromkeys(
        (
            "LoopbackSMTPServer",
            "ReceivedMessage",
            "ServerLog",
            "free_port",
            "make_certificate_authority",
        ),
        "servers",
    ),
}

__all__ = [
    "TEST_BACKEND",
    "DiscoverRunner",
    "EmailBackend",
    "LoopbackSMTPServer",
    "Outbox",
    "ReceivedMessage",
    "RecordedMessage",
    "ServerLog",
    "free_port",
    "make_certificate_authority",
    "outbox",
    "settings_for_test_backend",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
