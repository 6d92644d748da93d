"""Django's test runner, with the test backend where Django would put locmem.

``TEST_RUNNER = "django_reliable_mail.testing.DiscoverRunner"``: every configured backend
(``EMAIL_BACKEND``, or each ``MAILERS`` entry on Django 6.1, its OPTIONS kept) becomes
:class:`~.backend.EmailBackend` for the whole run, and its outbox is emptied before each
test, so a message that the real backend would refuse fails the test that sends it.
"""

from __future__ import annotations

import unittest
from typing import Any

from django.conf import settings
from django.test.runner import DiscoverRunner as _DiscoverRunner

from .backend import outbox

__all__ = ["TEST_BACKEND", "DiscoverRunner", "settings_for_test_backend"]

TEST_BACKEND = "django_reliable_mail.testing.EmailBackend"


def settings_for_test_backend(mailers: Any = None) -> dict[str, Any]:
    """The settings that put the test backend in place: ``MAILERS`` with every entry's
    BACKEND replaced (OPTIONS kept) when ``mailers`` is given, else ``EMAIL_BACKEND``."""
    if mailers is not None:
        return {
            "MAILERS": {
                alias: {**entry, "BACKEND": TEST_BACKEND} for alias, entry in mailers.items()
            }
        }
    return {"EMAIL_BACKEND": TEST_BACKEND}


class DiscoverRunner(_DiscoverRunner):
    def setup_test_environment(self, **kwargs: Any) -> None:
        mailers = getattr(settings, "MAILERS", None)
        super().setup_test_environment(**kwargs)  # locmem everywhere
        for name, value in settings_for_test_backend(mailers).items():
            setattr(settings, name, value)

    def get_resultclass(self) -> Any:
        return self._clearing(super().get_resultclass() or unittest.TextTestResult)

    @staticmethod
    def _clearing(result_class: Any) -> Any:
        class ClearingResult(result_class):
            def startTest(self, test: Any) -> None:
                outbox.clear()
                super().startTest(test)

        return ClearingResult
