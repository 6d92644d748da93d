"""The backend end to end: EmailMessage → stored row → SMTP on loopback → stored attempt."""

import logging

import django
import pytest
from django.core import mail
from django.core.mail import EmailMessage
from django.db import transaction
from django.test import override_settings

from django_reliable_mail.backends import EmailBackend
from django_reliable_mail.exceptions import (
    HeaderInjectionError,
    InvalidMessageError,
    ReliableMailConfigError,
    UnknownProviderError,
)
from django_reliable_mail.models import DeliveryAttempt, OutboundMessage, RecipientStatus

from .helpers import PASSWORD

pytestmark = pytest.mark.django_db


def provider_for(server, ca_file=None, **extra):
    values = {"HOST": server.host, "PORT": server.port, "TLS": server.tls, "TIMEOUT": 5}
    if ca_file:
        values["CA_FILE"] = ca_file
    values.update(extra)
    return values


def reliable_mail(**providers):
    return {"DEFAULT_PROVIDER": next(iter(providers)), "PROVIDERS": providers, "MODE": "immediate"}


def send(backend, *messages, callbacks):
    with callbacks(execute=True):
        return backend.send_messages(list(messages))


def message(**kwargs):
    values = {
        "subject": "Reset your password",
        "body": "Hello",
        "from_email": "app@example.com",
        "to": ["user@example.com"],
    }
    values.update(kwargs)
    return EmailMessage(**values)


def test_send_stores_message_attempt_and_transcript(
    smtp_server, tls, django_capture_on_commit_callbacks
):
    server = smtp_server(tls="starttls", users={"app": PASSWORD})
    config = reliable_mail(main=provider_for(server, tls[1], USERNAME="app", PASSWORD=PASSWORD))
    with override_settings(RELIABLE_MAIL=config):
        count = send(EmailBackend(), message(), callbacks=django_capture_on_commit_callbacks)
    assert count == 1
    row = OutboundMessage.objects.get()
    assert row.status == OutboundMessage.Status.SENT
    assert row.provider == "main"
    assert row.from_email == "app@example.com" and row.recipients == ["user@example.com"]
    assert row.subject == "Reset your password" and row.message_id.startswith("<")
    assert bytes(row.mime).replace(b"\r\n", b"\n") == server.messages[0].data.replace(
        b"\r\n", b"\n"
    )
    attempt = row.attempts.get()
    assert attempt.outcome == DeliveryAttempt.Outcome.ACCEPTED
    assert attempt.tls_version.startswith("TLSv1") and attempt.auth_mechanism
    assert attempt.queue_id and attempt.queue_id in attempt.reply_text
    assert "STARTTLS" in attempt.transcript and "[redacted]" in attempt.transcript
    assert attempt.recipient_replies["user@example.com"]["state"] == "accepted"
    assert row.recipient_statuses.get().state == RecipientStatus.State.ACCEPTED


def test_send_mail_keeps_the_configured_credentials(
    smtp_server, tls, django_capture_on_commit_callbacks
):
    # send_mail() hands the backend username=None, password=None: those must not erase them.
    server = smtp_server(tls="starttls", users={"app": PASSWORD})
    config = reliable_mail(main=provider_for(server, tls[1], USERNAME="app", PASSWORD=PASSWORD))
    with override_settings(
        RELIABLE_MAIL=config, EMAIL_BACKEND="django_reliable_mail.backends.EmailBackend"
    ):
        with django_capture_on_commit_callbacks(execute=True):
            assert mail.send_mail("s", "b", "app@example.com", ["user@example.com"]) == 1
    assert server.messages[0].login == "app"
    assert DeliveryAttempt.objects.get().auth_mechanism


def test_mime_bytes_are_exactly_what_is_sent(smtp_server, django_capture_on_commit_callbacks):
    server = smtp_server()
    with override_settings(RELIABLE_MAIL=reliable_mail(main=provider_for(server))):
        msg = message(
            body="Grüße aus Köln\n.leading dot line\n",
            cc=["cc@example.com"],
            bcc=["hidden@example.com"],
        )
        send(EmailBackend(), msg, callbacks=django_capture_on_commit_callbacks)
    row = OutboundMessage.objects.get()
    assert row.recipients == ["user@example.com", "cc@example.com", "hidden@example.com"]
    received = server.messages[0]
    assert received.data.replace(b"\r\n", b"\n") == bytes(row.mime).replace(b"\r\n", b"\n")
    assert b"hidden@example.com" not in received.data  # Bcc stays in the envelope only


@pytest.mark.django_db(transaction=True)
def test_rollback_sends_nothing(smtp_server):
    server = smtp_server()
    with override_settings(RELIABLE_MAIL=reliable_mail(main=provider_for(server))):
        with pytest.raises(RuntimeError), transaction.atomic():
            EmailBackend().send_messages([message()])
            raise RuntimeError("the view failed")
        assert OutboundMessage.objects.count() == 0
        assert server.messages == []
        # and outside a transaction the same call sends at once
        EmailBackend().send_messages([message()])
    assert len(server.messages) == 1


def test_transient_failure_schedules_a_retry(smtp_server, django_capture_on_commit_callbacks):
    server = smtp_server(data_reply="451 4.7.1 Greylisted, try again")
    with override_settings(RELIABLE_MAIL=reliable_mail(main=provider_for(server))):
        send(EmailBackend(), message(), callbacks=django_capture_on_commit_callbacks)
    row = OutboundMessage.objects.get()
    assert row.status == OutboundMessage.Status.RETRYING
    assert row.attempt_count == 1 and row.next_attempt_at > row.created_at
    assert "Greylisted" in row.last_error
    assert row.attempts.get().outcome == DeliveryAttempt.Outcome.TRANSIENT_FAILURE
    assert row.recipient_statuses.get().state == RecipientStatus.State.DEFERRED


def test_permanent_failure_fails_the_message(smtp_server, django_capture_on_commit_callbacks):
    server = smtp_server(rcpt_reply=lambda a: "550 5.1.1 <user@example.com> User unknown")
    with override_settings(RELIABLE_MAIL=reliable_mail(main=provider_for(server))):
        send(EmailBackend(), message(), callbacks=django_capture_on_commit_callbacks)
    row = OutboundMessage.objects.get()
    assert row.status == OutboundMessage.Status.FAILED
    status = row.recipient_statuses.get()
    assert (status.state, status.reply_code, status.reply_enhanced_code) == (
        "rejected",
        550,
        "5.1.1",
    )


def test_partial_then_retry_sends_only_to_deferred(smtp_server, django_capture_on_commit_callbacks):
    deferred_once = {"busy@example.com"}

    def rcpt(address):
        if address in deferred_once:
            deferred_once.discard(address)
            return "450 4.2.1 Mailbox busy"
        if address == "gone@example.com":
            return "550 5.1.1 User unknown"
        return None

    server = smtp_server(rcpt_reply=rcpt)
    with override_settings(RELIABLE_MAIL=reliable_mail(main=provider_for(server))):
        msg = message(to=["ok@example.com", "gone@example.com", "busy@example.com"])
        send(EmailBackend(), msg, callbacks=django_capture_on_commit_callbacks)
        row = OutboundMessage.objects.get()
        assert row.status == OutboundMessage.Status.RETRYING
        assert row.attempts.get().outcome == DeliveryAttempt.Outcome.PARTIAL
        OutboundMessage.objects.filter(pk=row.pk).update(next_attempt_at=row.created_at)
        from django_reliable_mail import delivery

        attempt = delivery.deliver_message(row.pk)
    assert attempt.outcome == DeliveryAttempt.Outcome.ACCEPTED
    assert [m.rcpt_tos for m in server.messages] == [["ok@example.com"], ["busy@example.com"]]
    row.refresh_from_db()
    assert row.status == OutboundMessage.Status.SENT
    states = dict(row.recipient_statuses.values_list("address", "state"))
    assert states == {
        "ok@example.com": "accepted",
        "gone@example.com": "rejected",
        "busy@example.com": "accepted",
    }
    assert row.attempts.count() == 2


def test_bad_password_does_not_burn_attempts(smtp_server, tls, django_capture_on_commit_callbacks):
    server = smtp_server(tls="starttls", users={"app": PASSWORD})
    config = reliable_mail(main=provider_for(server, tls[1], USERNAME="app", PASSWORD="nope-wrong"))
    with override_settings(RELIABLE_MAIL=config):
        send(EmailBackend(), message(), callbacks=django_capture_on_commit_callbacks)
    row = OutboundMessage.objects.get()
    assert row.status == OutboundMessage.Status.RETRYING
    assert row.attempt_count == 0
    attempt = row.attempts.get()
    assert attempt.outcome == DeliveryAttempt.Outcome.CONFIG_ERROR and attempt.provider_level


def test_unknown_outcome_retries_flagged_or_holds(smtp_server, django_capture_on_commit_callbacks):
    server = smtp_server(disconnect_after_body=True)
    config = reliable_mail(main=provider_for(server))
    with override_settings(RELIABLE_MAIL=config):
        send(EmailBackend(), message(), callbacks=django_capture_on_commit_callbacks)
    row = OutboundMessage.objects.get()
    attempt = row.attempts.get()
    assert attempt.outcome == DeliveryAttempt.Outcome.UNKNOWN and attempt.possible_duplicate
    assert row.status == OutboundMessage.Status.RETRYING
    with override_settings(RELIABLE_MAIL={**config, "UNKNOWN_OUTCOME": "hold"}):
        send(EmailBackend(), message(), callbacks=django_capture_on_commit_callbacks)
    held = OutboundMessage.objects.exclude(pk=row.pk).get()
    assert held.status == OutboundMessage.Status.HELD
    assert "held for an operator" in held.last_error


def test_options_choose_the_provider_and_never_reach_headers(
    smtp_server, django_capture_on_commit_callbacks
):
    first, second = smtp_server(), smtp_server(extensions=["REQUIRETLS"])
    config = reliable_mail(first=provider_for(first), second=provider_for(second))
    with override_settings(RELIABLE_MAIL=config):
        msg = message()
        msg.reliable_mail = {
            "provider": "second",
            "tags": ["reset"],
            "metadata": {"user": 7},
            "idempotency_key": "reset-7",
        }
        send(EmailBackend(), msg, callbacks=django_capture_on_commit_callbacks)
    row = OutboundMessage.objects.get()
    assert row.provider == "second" and row.tags == ["reset"] and row.metadata == {"user": 7}
    assert first.messages == [] and len(second.messages) == 1
    data = second.messages[0].data.lower()
    assert b"reset-7" not in data and b"reliable" not in data and b'user": 7' not in data


def test_routes_by_sender_domain(smtp_server, django_capture_on_commit_callbacks):
    first, second = smtp_server(), smtp_server()
    config = reliable_mail(first=provider_for(first), second=provider_for(second))
    config["ROUTES"] = {"billing.example.com": "second"}
    with override_settings(RELIABLE_MAIL=config):
        send(
            EmailBackend(),
            message(from_email="Billing <bill@billing.example.com>"),
            callbacks=django_capture_on_commit_callbacks,
        )
    assert len(second.messages) == 1 and first.messages == []


@pytest.mark.parametrize(
    ("kwargs", "options", "error", "text"),
    [
        ({"to": ["not an address"]}, None, InvalidMessageError, "not a valid email address"),
        ({"to": ["a@example.com\nBcc: x@example.com"]}, None, HeaderInjectionError, "line break"),
        ({"to": ["x" * 310 + "@example.com"]}, None, InvalidMessageError, "322 characters"),
        (
            {"from_email": "Shop <" + "s" * 320 + "@example.com>"},
            None,
            InvalidMessageError,
            "sender (from_email) address",
        ),
        ({}, {"provider": "nowhere"}, UnknownProviderError, "Unknown provider 'nowhere'"),
        ({}, {"priorty": 1}, InvalidMessageError, "unknown option(s) 'priorty'"),
        ({}, {"dsn_notify": ["SOMETIMES"]}, InvalidMessageError, "dsn_notify"),
        (
            {"headers": {"X-Injected": "a\nBcc: x@example.com"}},
            None,
            HeaderInjectionError,
            "extra header 'X-Injected'",
        ),
    ],
)
def test_bad_input_is_refused_at_send_time_and_nothing_is_stored(kwargs, options, error, text):
    with override_settings(
        RELIABLE_MAIL=reliable_mail(main={"HOST": "127.0.0.1", "PORT": 2, "TLS": "none"})
    ):
        good, bad = message(), message(**kwargs)
        if options:
            bad.reliable_mail = options
        with pytest.raises(error) as excinfo:
            EmailBackend().send_messages([good, bad])
    assert text in str(excinfo.value)
    assert OutboundMessage.objects.count() == 0


def test_fail_silently_skips_invalid_messages_only(smtp_server, django_capture_on_commit_callbacks):
    server = smtp_server()
    with override_settings(RELIABLE_MAIL=reliable_mail(main=provider_for(server))):
        count = send(
            EmailBackend(fail_silently=True),
            message(),
            message(to=[]),
            callbacks=django_capture_on_commit_callbacks,
        )
    assert count == 1 and len(server.messages) == 1


def test_unknown_backend_option_is_a_clear_error():
    with pytest.raises(Exception) as excinfo:
        EmailBackend(alias="default" if django.VERSION >= (6, 1) else None, hots="x")
    assert "hots" in str(excinfo.value)


def test_backend_options_override_the_provider(smtp_server, django_capture_on_commit_callbacks):
    server = smtp_server(extensions=["PIPELINING"])
    with override_settings(
        RELIABLE_MAIL=reliable_mail(main={"HOST": "127.0.0.1", "PORT": 1, "TLS": "none"})
    ):
        backend = EmailBackend(provider="main", port=server.port, disable_extensions=["PIPELINING"])
        send(backend, message(), callbacks=django_capture_on_commit_callbacks)
    attempt = DeliveryAttempt.objects.get()
    assert attempt.outcome == "accepted"
    assert "PIPELINING" not in attempt.extensions_used


def test_bad_settings_raise_when_the_backend_is_built():
    with override_settings(RELIABLE_MAIL={"PROVIDERS": {"x": {"HOST": "h", "TLS": "ssl"}}}):
        with pytest.raises(ReliableMailConfigError) as excinfo:
            EmailBackend()
    assert "RELIABLE_MAIL['PROVIDERS']['x']['TLS'] is 'ssl'" in str(excinfo.value)


def test_without_reliable_mail_djangos_email_settings_are_used(
    smtp_server, settings, django_capture_on_commit_callbacks
):
    server = smtp_server()
    del settings.RELIABLE_MAIL
    settings.EMAIL_HOST, settings.EMAIL_PORT = server.host, server.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 5
    with django_capture_on_commit_callbacks(execute=True):
        count = mail.get_connection("django_reliable_mail.backends.EmailBackend").send_messages(
            [message()]
        )
    assert count == 1 and len(server.messages) == 1
    assert OutboundMessage.objects.get().provider == "default"


@pytest.mark.skipif(django.VERSION < (6, 1), reason="MAILERS arrived in Django 6.1")
def test_mailers_options_on_django_61(smtp_server, settings, django_capture_on_commit_callbacks):
    from django.core.mail import InvalidMailer, mailers

    server = smtp_server()
    settings.MAILERS = {
        "default": {
            "BACKEND": "django_reliable_mail.backends.EmailBackend",
            "OPTIONS": {"provider": "main", "port": server.port, "host": server.host},
        },
        "broken": {
            "BACKEND": "django_reliable_mail.backends.EmailBackend",
            "OPTIONS": {"hots": "x"},
        },
    }
    settings.RELIABLE_MAIL = reliable_mail(main={"HOST": "192.0.2.1", "PORT": 1, "TLS": "none"})
    with django_capture_on_commit_callbacks(execute=True):
        assert mailers["default"].send_messages([message()]) == 1
    assert len(server.messages) == 1
    with pytest.raises(InvalidMailer, match="hots"):
        mailers["broken"]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"])
def test_no_secret_reaches_the_database_or_the_log(
    smtp_server, tls, caplog, mechanism, django_capture_on_commit_callbacks
):
    token = "ya29.token-Very-Secret"
    server = smtp_server(
        tls="starttls", users={"app@example.com": PASSWORD}, tokens={"app@example.com": token}
    )
    creds = (
        {"OAUTH2_TOKEN": "tests.helpers.oauth_token"}
        if mechanism == "XOAUTH2"
        else {"PASSWORD": PASSWORD}
    )
    config = reliable_mail(
        main=provider_for(
            server, tls[1], USERNAME="app@example.com", AUTH_MECHANISMS=[mechanism], **creds
        )
    )
    caplog.set_level(logging.DEBUG)
    with override_settings(RELIABLE_MAIL=config):
        send(
            EmailBackend(),
            message(),
            message(to=["gone@example.com"]),
            callbacks=django_capture_on_commit_callbacks,
        )
        # and a failing login, whose reply and error are stored too
        bad = (
            {**config["PROVIDERS"]["main"], "PASSWORD": PASSWORD + "x"}
            if mechanism != "XOAUTH2"
            else None
        )
        if bad:
            with override_settings(RELIABLE_MAIL=reliable_mail(main=bad)):
                send(EmailBackend(), message(), callbacks=django_capture_on_commit_callbacks)
    assert DeliveryAttempt.objects.filter(auth_mechanism=mechanism).exists()
    from .helpers import forbidden_strings

    stored = dump_database()
    for secret in forbidden_strings("app@example.com", PASSWORD, token):
        assert secret not in stored, secret
        assert secret not in caplog.text, secret


def dump_database():
    from django.core import serializers

    objects = [
        *OutboundMessage.objects.all(),
        *DeliveryAttempt.objects.all(),
        *RecipientStatus.objects.all(),
    ]
    return serializers.serialize("json", objects)
