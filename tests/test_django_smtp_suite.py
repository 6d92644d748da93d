"""Django's own SMTP-backend tests (from the installed Django's sdist) against our backend.

See ``tests/django_suite.py``: excluded tests are skipped with their reason; every other
test of Django's ``SMTPBackendTests`` and ``SMTPBackendStoppedServerTests`` must pass.
Set ``RELIABLE_MAIL_SKIP_DJANGO_SUITE=1`` to skip them where PyPI cannot be reached.
"""

import os

import pytest

from .django_suite import SuiteUnavailable, our_test_classes

try:
    globals().update(our_test_classes())
except SuiteUnavailable as exc:
    if not os.environ.get("RELIABLE_MAIL_SKIP_DJANGO_SUITE"):
        raise
    pytest.skip(str(exc), allow_module_level=True)
