"""Django's own SMTP-backend tests, from the installed Django's source, run against ours.

The tests ship in Django's sdist only (``tests/mail/``), not in the wheel. They are
downloaded with pip for exactly the installed version, once, and extracted under
``.django-tests/<version>/`` (ignored by git), then imported as a package of their own.

:func:`our_test_classes` returns Django's SMTP test classes made to test our backend:
``smtp.EmailBackend`` is ours wherever the tests reach it (the name in their module and
Django's module attribute, so a dotted path to Django's backend gets ours too),
``TransactionTestCase`` is mixed in because our backend stores each message before it
sends it, and ``RELIABLE_MAIL`` is unset, so the backend is built from the ``EMAIL_*``
settings the tests set. Excluded tests are skipped with their reason (``EXCLUDED``).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
import types
import unittest
from pathlib import Path
from typing import Any

import django
from django.test import TransactionTestCase, override_settings

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("RELIABLE_MAIL_DJANGO_TESTS", ROOT / ".django-tests"))
OURS = "django_reliable_mail.backends.EmailBackend"
INTERNALS = "inspects Django's backend internals"

#: Tests that inspect Django's backend internals (``backend.connection``,
#: ``_partial_connection``, mocks of smtplib), or a default we chose to differ on, each
#: with its reason; per Django series. Everything else must pass.
EXCLUDED: dict[tuple[int, int], dict[str, str]] = {
    (5, 2): {
        "test_server_open": f"{INTERNALS}: backend.connection and _partial_connection",
        "test_reopen_connection": f"{INTERNALS}: a mocked backend.connection",
        "test_reopen_replaces_partial_connection": f"{INTERNALS}: _partial_connection",
        "test_connection_timeout_custom": f"{INTERNALS}: backend.connection.timeout",
        "test_email_msg_uses_crlf": f"{INTERNALS}: patches smtplib.SMTP.send",
        "test_send_messages_after_open_failed": f"{INTERNALS}: a mocked connection and open()",
        "test_connection_timeout_default": (
            "a deliberate difference: our default timeout is 30 s (TIMEOUT), Django's none"
        ),
    },
}
EXCLUDED[(6, 0)] = {
    **EXCLUDED[(5, 2)],
    "test_prep_address_without_force_ascii": f"{INTERNALS}: calls its prep_address() helper",
    "test_rejects_non_ascii_local_part": (
        f"{INTERNALS}: a mocked backend.connection; and a deliberate difference: a non-ASCII "
        "local part is sent with SMTPUTF8 (RFC 6531) where the server offers it"
    ),
}
EXCLUDED[(6, 1)] = {
    **EXCLUDED[(6, 0)],
    "test_smtp_connection_uses_host_and_port": f"{INTERNALS}: mocks smtplib.SMTP",
    "test_auth_attempted": f"{INTERNALS}: mocks smtplib.SMTP.login",
    "test_ssl_context_uses_ssl_certfile_and_keyfile": (
        f"{INTERNALS}: its ssl_context property, with ssl.SSLContext mocked"
    ),
    "test_smtp_connection_uses_timeout": f"{INTERNALS}: backend.connection.timeout",
    "test_serialized_message_uses_crlf_line_ending": (
        f"{INTERNALS}: mocks backend.connection.sendmail"
    ),
}


class SuiteUnavailable(RuntimeError):
    pass


def django_mail_tests(version: str | None = None) -> Path:
    """The directory of Django's ``tests/mail`` for ``version`` (the installed one),
    downloaded and extracted on first use; a package named ``django_mail_<version>``."""
    version = version or django.get_version()
    package = CACHE / version / f"django_mail_{version.replace('.', '_')}"
    if (package / "__init__.py").exists():
        return package
    with tempfile.TemporaryDirectory() as download:
        command = [
            *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
            *("--no-binary", ":all:", "--dest", download),
            f"Django=={version}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        archives = list(Path(download).glob("*.tar.gz"))
        if done.returncode != 0 or not archives:
            raise SuiteUnavailable(
                f"could not download Django {version}'s sdist for its tests/mail "
                f"({' '.join(command)}): {done.stderr.strip()[-500:]}"
            )
        _extract_mail_tests(archives[0], package)
    return package


def _extract_mail_tests(archive: Path, package: Path) -> None:
    staging = package.with_name(package.name + ".partial")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/tests/mail/" in m.name and m.isfile()]
        for member in members:
            relative = member.name.split("/tests/mail/", 1)[1]
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())
    (staging / "__init__.py").touch()
    staging.rename(package)  # whole or not at all


def _smtp_module(package: Path) -> types.ModuleType:
    """Django's module that holds the SMTP backend tests, imported as a package."""
    sys.path.insert(0, str(package.parent))
    try:
        name = "test_backends" if django.VERSION >= (6, 1) else "tests"
        return importlib.import_module(f"{package.name}.{name}")
    finally:
        sys.path.remove(str(package.parent))


def our_test_classes() -> dict[str, type]:
    """Django's SMTP backend test classes, each made to test our backend."""
    from django_reliable_mail.backends import EmailBackend

    module = _smtp_module(django_mail_tests())
    # The tests' own ``smtp.EmailBackend(...)`` calls and class attributes get ours.
    module.smtp = types.SimpleNamespace(EmailBackend=EmailBackend)
    excluded = EXCLUDED[django.VERSION[:2]]
    classes = {}
    for name in ("SMTPBackendTests", "SMTPBackendStoppedServerTests"):
        theirs = getattr(module, name)
        attributes: dict[str, Any] = {
            "__module__": __name__,
            "__qualname__": f"Django{name}",
            "databases": {"default"},
            "email_backend": OURS,
            "backend_class": EmailBackend,
        }
        for test, reason in excluded.items():
            if hasattr(theirs, test):
                attributes[test] = unittest.skip(reason)(getattr(theirs, test))
        ours = type(f"Django{name}", (theirs, TransactionTestCase), attributes)
        classes[ours.__name__] = _with_our_backend(ours)
    return classes


def _with_our_backend(cls: type) -> type:
    """The class with RELIABLE_MAIL unset and Django's backend module pointing to ours."""
    from django.core.mail.backends import smtp

    from django_reliable_mail.backends import EmailBackend

    cls = override_settings(RELIABLE_MAIL=None)(cls)
    setup = cls.setUpClass.__func__

    def set_up_class(klass: type) -> None:
        klass._django_backend = smtp.EmailBackend
        smtp.EmailBackend = EmailBackend
        klass.addClassCleanup(setattr, smtp, "EmailBackend", klass._django_backend)
        setup(klass)

    cls.setUpClass = classmethod(set_up_class)
    return cls
