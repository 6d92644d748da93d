"""The test backend users run in their own suites: the real checks, nothing stored or sent."""

import subprocess
import sys
import textwrap

import pytest
from django.core import mail
from django.core.mail import EmailMessage

from django_reliable_mail.exceptions import InvalidMessageError, UnknownProviderError
from django_reliable_mail.models import OutboundMessage
from django_reliable_mail.testing import (
    TEST_BACKEND,
    EmailBackend,
    outbox,
    settings_for_test_backend,
)


def message(**kwargs):
    values = {"subject": "Reset", "body": "Hello", "from_email": "app@example.com"}
    values.update(kwargs)
    values.setdefault("to", ["ann@example.com"])
    return EmailMessage(**values)


@pytest.fixture(autouse=True)
def _empty_outbox(settings):
    settings.RELIABLE_MAIL = {
        "PROVIDERS": {"loopback": {"HOST": "127.0.0.1", "PORT": 2525, "TLS": "none"}},
        "MODE": "immediate",
    }
    outbox.clear()
    yield
    outbox.clear()


def test_an_option_typo_fails_under_the_test_backend_and_passes_under_locmem(settings):
    def typo():
        msg = message()
        msg.reliable_mail = {"priorty": 5}
        return msg

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert typo().send() == 1  # what Django's test set-up lets through
    settings.EMAIL_BACKEND = TEST_BACKEND
    with pytest.raises(InvalidMessageError, match=r"unknown option.*'priorty'"):
        typo().send()
    outbox.assert_nothing_sent()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda m: setattr(m, "reliable_mail", {"provider": "nowhere"}), UnknownProviderError),
        (lambda m: setattr(m, "to", ["not an address"]), InvalidMessageError),
        (lambda m: setattr(m, "subject", "a\nBcc: x@example.com"), InvalidMessageError),
    ],
)
def test_what_the_real_backend_refuses_it_refuses(settings, change, error):
    settings.EMAIL_BACKEND = TEST_BACKEND
    msg = message()
    change(msg)
    with pytest.raises(error):
        msg.send()


@pytest.mark.django_db
def test_it_records_envelope_options_bytes_and_provider_and_stores_nothing(settings):
    settings.EMAIL_BACKEND = TEST_BACKEND
    msg = message(to=["Ann <ann@example.com>"], bcc=["audit@example.com"])
    msg.reliable_mail = {"require_tls": True, "tags": ["reset"]}
    assert msg.send() == 1
    recorded = outbox.assert_one(to="ann@example.com", tag="reset", require_tls=True)
    assert recorded.provider == "loopback" and recorded.sender == "app@example.com"
    assert recorded.recipients == ("ann@example.com", "audit@example.com")
    assert (
        recorded.data.startswith(b"Content-Type: text/plain") and b"\r\n\r\nHello" in recorded.data
    )
    assert b"audit@example.com" not in recorded.data and b"reliable" not in recorded.data
    assert recorded.message is msg and msg.reliable_mail_status.status == "recorded"
    assert OutboundMessage.objects.count() == 0


def test_assertion_helpers_say_what_was_sent_instead(settings):
    settings.EMAIL_BACKEND = TEST_BACKEND
    mail.send_mail("Welcome", "Hi", "app@example.com", ["bob@example.com"])
    assert len(outbox) == 1 and outbox.matching(subject="Welcome")
    with pytest.raises(AssertionError, match=r"'Welcome' to bob@example\.com via loopback"):
        outbox.assert_sent(to="ann@example.com")
    with pytest.raises(AssertionError, match="expected no message"):
        outbox.assert_nothing_sent()
    with pytest.raises(AssertionError, match="expected 2"):
        outbox.assert_sent(2, subject="Welcome")


def test_it_fills_djangos_outbox_too(settings):
    settings.EMAIL_BACKEND = TEST_BACKEND
    mail.outbox = []
    message().send()
    assert len(mail.outbox) == 1 and len(outbox) == 1


def test_settings_for_test_backend_keep_each_mailers_options():
    mailers = {"default": {"BACKEND": "x", "OPTIONS": {"provider": "ses"}}}
    assert settings_for_test_backend(mailers) == {
        "MAILERS": {"default": {"BACKEND": TEST_BACKEND, "OPTIONS": {"provider": "ses"}}}
    }
    assert settings_for_test_backend() == {"EMAIL_BACKEND": TEST_BACKEND}


def test_the_pytest_fixture_puts_the_test_backend_in_place(reliable_mail_outbox, settings):
    assert settings.EMAIL_BACKEND == TEST_BACKEND or TEST_BACKEND in str(settings.MAILERS)
    message().send()
    reliable_mail_outbox.assert_one(to="ann@example.com")


def test_it_takes_the_real_backends_arguments():
    backend = EmailBackend(provider="loopback", fail_silently=True)
    bad = message(to=["not an address"])
    assert backend.send_messages([bad, message()]) == 1  # fail_silently skips the bad one
    outbox.assert_one(to="ann@example.com")


def test_djangos_test_runner_gets_the_test_backend(tmp_path):
    """Under Django's runner (which puts locmem in place), our DiscoverRunner puts the test
    backend there instead: a typo fails the user's test."""
    (tmp_path / "typo_tests.py").write_text(
        textwrap.dedent(
            """
            from django.core import mail
            from django.core.mail import EmailMessage
            from django.test import SimpleTestCase

            from django_reliable_mail.testing import outbox


            class MailTests(SimpleTestCase):
                def test_typo(self):
                    msg = EmailMessage("s", "b", "app@example.com", ["ann@example.com"])
                    msg.reliable_mail = {"priorty": 5}
                    msg.send()

                def test_fine(self):
                    EmailMessage("s", "b", "app@example.com", ["ann@example.com"]).send()
                    outbox.assert_one(to="ann@example.com")
                    self.assertEqual(len(mail.outbox), 1)
            """
        )
    )
    command = [
        sys.executable,
        "-m",
        "django",
        "test",
        "typo_tests",
        "--settings=tests.settings",
        "--testrunner=django_reliable_mail.testing.DiscoverRunner",
        "-v",
        "2",
    ]
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {"PYTHONPATH": f"{tmp_path}:{root}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "test_fine (typo_tests.MailTests.test_fine) ... ok" in done.stderr, done.stderr
    assert "test_typo (typo_tests.MailTests.test_typo) ... ERROR" in done.stderr, done.stderr
    assert "unknown option(s) 'priorty'" in done.stderr
