"""A pytest fixture for the test backend, loaded by pytest through the package's entry
point (nothing is imported from Django until the fixture is used).

    def test_reset_mail(client, reliable_mail_outbox):
        client.post("/password-reset/", {"email": "ann@example.com"})
        reliable_mail_outbox.assert_one(to="ann@example.com")

With pytest-django the fixture puts the test backend in place for one test (pytest-django,
like Django's runner, puts locmem there otherwise) and yields an emptied outbox.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def reliable_mail_outbox(settings: Any) -> Iterator[Any]:
    from django.conf import settings as django_settings

    from .backend import outbox
    from .runner import settings_for_test_backend

    mailers = getattr(django_settings, "MAILERS", None)
    for name, value in settings_for_test_backend(mailers).items():
        setattr(settings, name, value)
    outbox.clear()
    yield outbox
    outbox.clear()
