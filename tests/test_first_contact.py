"""A user switching from Django's SMTP backend: change EMAIL_BACKEND, keep the EMAIL_*
settings. What works as in Django, what is raised and when, and what is refused loudly."""

import io
import logging
import os
import smtplib
import ssl

import pytest
import trustme
from django.core import mail
from django.core.mail import EmailMessage
from django.db import transaction

from django_reliable_mail.backends import EmailBackend
from django_reliable_mail.checks import check_broker, check_settings
from django_reliable_mail.exceptions import (
    AuthenticationFailed,
    DataRefused,
    DeliveryError,
    NotSupported,
    RecipientsRefused,
    ReliableMailConfigError,
    SenderRefused,
    TLSConflictError,
)
from django_reliable_mail.models import DeliveryAttempt, OutboundMessage
from django_reliable_mail.testing import LoopbackSMTPServer

from .helpers import PASSWORD

OURS = "django_reliable_mail.backends.EmailBackend"


@pytest.fixture
def django_email(settings):
    """Django's settings as a Django project has them: EMAIL_*, no RELIABLE_MAIL."""
    del settings.RELIABLE_MAIL
    settings.EMAIL_BACKEND = OURS
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_TIMEOUT = 5
    return settings


def point_at(settings, server):
    settings.EMAIL_HOST, settings.EMAIL_PORT = server.host, server.port


def message(**kwargs):
    values = {"subject": "Reset", "body": "Hello", "from_email": "app@example.com"}
    values.update(kwargs)
    values.setdefault("to", ["user@example.com"])
    return EmailMessage(**values)


# -- the drop-in sends, and says so when it cannot --------------------------------------


@pytest.mark.django_db(transaction=True)
def test_send_mail_goes_out_in_the_call_without_any_worker(django_email, smtp_server):
    server = smtp_server()
    point_at(django_email, server)
    del django_email.Q_CLUSTER  # nothing configured for a worker at all
    assert mail.send_mail("Reset", "Hello", "app@example.com", ["user@example.com"]) == 1
    assert len(server.messages) == 1  # before send_mail() returned
    assert OutboundMessage.objects.get().status == OutboundMessage.Status.SENT


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("server_options", "error", "django_class"),
    [
        (
            {"rcpt_reply": lambda a: "550 5.1.1 No such user"},
            RecipientsRefused,
            smtplib.SMTPRecipientsRefused,
        ),
        ({"mail_reply": "553 5.7.1 Sender refused"}, SenderRefused, smtplib.SMTPSenderRefused),
        ({"data_reply": "554 5.6.0 Message refused"}, DataRefused, smtplib.SMTPDataError),
    ],
)
def test_a_permanent_failure_raises_djangos_exception_carrying_the_message(
    django_email, smtp_server, server_options, error, django_class
):
    server = smtp_server(**server_options)
    point_at(django_email, server)
    with pytest.raises(error) as excinfo:
        mail.send_mail("Reset", "Hello", "app@example.com", ["user@example.com"])
    raised = excinfo.value
    assert isinstance(raised, django_class) and isinstance(raised, DeliveryError)
    stored = raised.outbound_message
    assert stored.status == OutboundMessage.Status.FAILED
    assert OutboundMessage.objects.get().pk == stored.pk  # stored once, not lost
    if error is RecipientsRefused:
        assert raised.recipients == {"user@example.com": (550, "5.1.1 No such user")}
    if error is SenderRefused:
        assert (raised.smtp_code, raised.sender) == (553, "app@example.com")


@pytest.mark.django_db(transaction=True)
def test_a_refused_login_raises_smtp_authentication_error(django_email, smtp_server, tls):
    server = smtp_server(tls="implicit", users={"app": PASSWORD})
    config = {
        "PROVIDERS": {
            "main": {
                "HOST": server.host,
                "PORT": server.port,
                "TLS": "implicit",
                "CA_FILE": tls[1],
                "USERNAME": "app",
                "PASSWORD": "wrong-Secret",
                "TIMEOUT": 5,
            }
        },
        "MODE": "immediate",
    }
    django_email.RELIABLE_MAIL = config
    with pytest.raises(AuthenticationFailed) as excinfo:
        mail.send_mail("Reset", "Hello", "app@example.com", ["user@example.com"])
    assert isinstance(excinfo.value, smtplib.SMTPAuthenticationError)
    assert excinfo.value.smtp_code == 535
    assert "wrong-Secret" not in str(excinfo.value)
    # A provider-level failure: the message waits, its attempts unspent.
    assert excinfo.value.outbound_message.status == OutboundMessage.Status.RETRYING


@pytest.mark.django_db(transaction=True)
def test_starttls_required_but_missing_raises_not_supported(django_email, smtp_server):
    server = smtp_server()
    point_at(django_email, server)
    django_email.EMAIL_USE_TLS = True
    with pytest.raises(NotSupported, match="STARTTLS extension not supported by server"):
        mail.send_mail("Reset", "Hello", "app@example.com", ["user@example.com"])
    assert server.log.messages == []


@pytest.mark.django_db(transaction=True)
def test_transient_failures_are_not_raised_but_logged_and_retried(
    django_email, smtp_server, caplog
):
    server = smtp_server(data_reply="451 4.7.1 Greylisted")
    point_at(django_email, server)
    caplog.set_level(logging.INFO)
    msg = message()
    assert msg.send() == 1
    row = OutboundMessage.objects.get()
    assert row.status == OutboundMessage.Status.RETRYING
    assert msg.reliable_mail_status.status == OutboundMessage.Status.RETRYING
    assert "Greylisted" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_fail_silently_and_transactions_never_raise(django_email, smtp_server):
    server = smtp_server(rcpt_reply=lambda a: "550 5.1.1 No such user")
    point_at(django_email, server)
    assert mail.send_mail("s", "b", "app@example.com", ["u@example.com"], fail_silently=True) == 1
    # Inside a transaction the attempt follows the commit: nothing can reach the caller.
    with transaction.atomic():
        assert mail.send_mail("s", "b", "app@example.com", ["u@example.com"]) == 1
        assert len(server.log.commands) and OutboundMessage.objects.count() == 2
    statuses = set(OutboundMessage.objects.values_list("status", flat=True))
    assert statuses == {OutboundMessage.Status.FAILED}


# -- Django's semantics where they are safe --------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_use_tls_false_overrides_email_use_tls(django_email, smtp_server):
    server = smtp_server()  # no STARTTLS at all
    point_at(django_email, server)
    django_email.EMAIL_USE_TLS = True
    connection = mail.get_connection(use_tls=False)
    assert connection.use_tls is False
    assert connection.send_messages([message()]) == 1
    assert len(server.messages) == 1 and "STARTTLS" not in server.log.raw()


@pytest.mark.django_db(transaction=True)
def test_use_ssl_false_overrides_email_use_ssl(django_email, smtp_server):
    server = smtp_server()
    point_at(django_email, server)
    django_email.EMAIL_USE_SSL = True
    assert mail.get_connection(use_ssl=False).send_messages([message()]) == 1
    assert len(server.messages) == 1


def test_both_tls_flags_raise_value_error_and_are_a_check_error(django_email):
    django_email.EMAIL_USE_TLS = django_email.EMAIL_USE_SSL = True
    with pytest.raises(ValueError, match="EMAIL_USE_TLS/EMAIL_USE_SSL are mutually exclusive"):
        EmailBackend()
    assert [m.id for m in check_settings() if m.is_serious()] == ["reliable_mail.E024"]
    django_email.EMAIL_USE_SSL = False
    with pytest.raises(TLSConflictError):
        EmailBackend(use_ssl=True)


@pytest.mark.django_db(transaction=True)
def test_an_address_without_a_domain_is_sent_as_given(django_email, smtp_server):
    server = smtp_server()
    point_at(django_email, server)
    assert mail.send_mail("Subject", "Content", "tester", ["django"]) == 1
    (received,) = server.messages
    assert (received.mail_from, received.rcpt_tos) == ("tester", ["django"])


@pytest.mark.django_db(transaction=True)
def test_a_user_without_a_password_means_no_auth(django_email, smtp_server):
    server = smtp_server(users={"app": PASSWORD})
    point_at(django_email, server)
    django_email.EMAIL_HOST_USER = "app"
    warnings = [m for m in check_settings() if m.id == "reliable_mail.W002"]
    assert warnings and warnings[0].msg.startswith("EMAIL_HOST_USER is set")
    assert mail.send_mail("s", "b", "app@example.com", ["u@example.com"]) == 1
    assert server.messages[0].login is None and server.log.auth_attempts == []


@pytest.fixture(scope="module")
def client_ca():
    return trustme.CA()


def server_requiring_a_client_certificate(client_ca, tmp_path):
    server_ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ca.issue_cert("127.0.0.1").configure_cert(context)
    context.verify_mode = ssl.CERT_REQUIRED
    client_ca.configure_trust(context)
    ca_file = tmp_path / "server-ca.pem"
    server_ca.cert_pem.write_to_path(str(ca_file))
    return LoopbackSMTPServer(tls="implicit", tls_context=context).start(), str(ca_file)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("given_as", ["provider keys", "backend arguments"])
def test_a_client_certificate_is_offered(settings, client_ca, tmp_path, given_as):
    server, ca_file = server_requiring_a_client_certificate(client_ca, tmp_path)
    try:
        cert = client_ca.issue_cert("client.example")
        cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        provider = {"HOST": server.host, "PORT": server.port, "TLS": "implicit"}
        provider.update({"CA_FILE": ca_file, "TIMEOUT": 5})
        certified = dict(provider)
        if given_as == "provider keys":
            certified.update({"CLIENT_CERTFILE": str(cert_file), "CLIENT_KEYFILE": str(key_file)})
        settings.RELIABLE_MAIL = {
            "DEFAULT_PROVIDER": "main",
            "PROVIDERS": {"main": certified, "bare": provider},
            "MODE": "immediate",
        }
        # Without the certificate the server refuses the handshake.
        bare = EmailBackend(provider="bare", fail_silently=True)
        assert bare.send_messages([message()]) == 1 and server.messages == []
        if given_as == "provider keys":
            backend = EmailBackend()
        else:
            backend = EmailBackend(ssl_certfile=str(cert_file), ssl_keyfile=str(key_file))
        assert (backend.ssl_certfile, backend.ssl_keyfile) == (str(cert_file), str(key_file))
        assert backend.send_messages([message()]) == 1
        assert len(server.messages) == 1
    finally:
        server.stop()


@pytest.mark.django_db(transaction=True)
def test_with_connection_reuses_one_session_and_keeps_the_order(django_email, smtp_server):
    server = smtp_server()
    point_at(django_email, server)
    with mail.get_connection() as connection:
        for batch in range(3):
            sent = connection.send_messages(
                [message(to=[f"u{batch}-{i}@example.com"]) for i in range(4)]
            )
            assert sent == 4
    assert server.log.connections == 1
    order = [m.rcpt_tos[0] for m in server.messages]
    assert order == [f"u{b}-{i}@example.com" for b in range(3) for i in range(4)]


@pytest.mark.django_db(transaction=True)
def test_open_raises_what_django_raises(django_email, smtp_server):
    from django_reliable_mail.testing import free_port

    django_email.EMAIL_HOST, django_email.EMAIL_PORT = "127.0.0.1", free_port()
    backend = EmailBackend()
    with pytest.raises(ConnectionRefusedError):
        backend.open()
    backend.fail_silently = True
    assert backend.open() is None and backend.connection is None


# -- queue mode: never fail after committing ---------------------------------------------


def queue_mode(settings, server=None):
    host, port = (server.host, server.port) if server else ("127.0.0.1", 2)
    settings.RELIABLE_MAIL = {
        "PROVIDERS": {"main": {"HOST": host, "PORT": port, "TLS": "none", "TIMEOUT": 5}},
        "MODE": "queue",
    }


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("q_cluster", "named"),
    [
        (None, "Q_CLUSTER is not set"),
        ({"name": "x"}, "redis"),  # django-q2's default broker; its client is not installed
        ({"name": "x", "mongo": {"host": "h"}}, "mongo"),
        ({"name": "x", "broker_class": "no_such_module.Broker"}, "broker_class"),
        ({"name": "x", "orm": "elsewhere"}, "not in DATABASES"),
    ],
)
def test_no_usable_broker_is_a_check_error_and_nothing_is_stored(settings, q_cluster, named):
    queue_mode(settings)
    if q_cluster is None:
        del settings.Q_CLUSTER
    else:
        settings.Q_CLUSTER = q_cluster
    (error,) = check_broker()
    assert error.id == "reliable_mail.E025" and named in error.msg
    with pytest.raises(ReliableMailConfigError, match=named):
        EmailBackend().send_messages([message()])
    assert OutboundMessage.objects.count() == 0


def test_immediate_mode_without_a_broker_only_warns(django_email):
    del django_email.Q_CLUSTER
    (warning,) = check_broker()
    assert warning.id == "reliable_mail.W017" and "retries wait for a worker" in warning.msg


@pytest.mark.django_db(transaction=True)
def test_a_wake_up_that_fails_after_the_commit_is_logged_not_raised(settings, monkeypatch, caplog):
    from django_reliable_mail import tasks

    queue_mode(settings)
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "orm": None, "sync": False}

    def broken(ids):
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks, "_queue_deliver_tasks", broken)
    monkeypatch.setattr(tasks, "broker_problem", lambda: None)
    monkeypatch.setattr(tasks, "wake_in_transaction", lambda: False)
    assert EmailBackend().send_messages([message()]) == 1
    assert OutboundMessage.objects.get().status == OutboundMessage.Status.QUEUED
    assert "no worker could be woken" in caplog.text


@pytest.mark.django_db
def test_queue_mode_stores_non_secret_arguments_and_the_worker_uses_them(settings, smtp_server):
    from django_reliable_mail import delivery

    server = smtp_server()
    queue_mode(settings)  # the provider points nowhere (port 2)
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "sync": False}
    backend = EmailBackend(port=server.port, username="", password="", use_tls=False, timeout=4)
    with transaction.atomic():
        assert backend.send_messages([message()]) == 1
    row = OutboundMessage.objects.get()
    stored = row.options["connection"]
    assert stored == {
        "port": server.port,
        "username": "",
        "password": "",
        "use_tls": False,
        "timeout": 4,
    }
    delivery.deliver_messages([row.pk])  # a worker, which sees only the database
    assert len(server.messages) == 1


def test_queue_mode_refuses_a_password_argument_saying_where_it_belongs(settings):
    queue_mode(settings)
    with pytest.raises(ReliableMailConfigError) as excinfo:
        mail.get_connection(OURS, username="app", password="hunter2-Secret")
    text = str(excinfo.value)
    assert "never stored" in text and "RELIABLE_MAIL['PROVIDERS']['main']['PASSWORD']" in text
    assert "hunter2-Secret" not in text


# -- the result handle -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_each_message_carries_its_stored_id_and_status(django_email, smtp_server, settings):
    server = smtp_server()
    point_at(django_email, server)
    msg = message()
    msg.reliable_mail = {"idempotency_key": "reset-1"}
    msg.send()
    handle = msg.reliable_mail_status
    assert handle.status == OutboundMessage.Status.SENT and not handle.duplicate
    assert handle.message == OutboundMessage.objects.get(pk=handle.id)
    again = message()
    again.reliable_mail = {"idempotency_key": "reset-1"}
    assert again.send() == 1
    assert (again.reliable_mail_status.id, again.reliable_mail_status.duplicate) == (
        handle.id,
        True,
    )
    empty = message(to=[])
    assert empty.send() == 0 and not hasattr(empty, "reliable_mail_status")


@pytest.mark.django_db
def test_in_queue_mode_the_handle_says_queued(settings):
    queue_mode(settings)
    msg = message()
    EmailBackend().send_messages([msg])
    assert msg.reliable_mail_status.status == OutboundMessage.Status.QUEUED
    assert msg.reliable_mail_status.id == OutboundMessage.objects.get().pk
    assert DeliveryAttempt.objects.count() == 0


# -- the demo ------------------------------------------------------------------------------


def test_send_command_gives_back_the_callers_signal_handlers(settings):
    import signal

    from django.core.management import call_command

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    call_command("reliable_mail_send", "--no-progress", stdout=io.StringIO())
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_the_demo_tells_its_story_without_anyone_elses_warnings(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "RELIABLE_MAIL"))}
    env["DEMO_DB"] = str(tmp_path / "demo.sqlite3")
    done = subprocess.run(
        [sys.executable, str(root / "example_project" / "manage.py"), "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no deprecation notices, no log lines of the libraries
    out = done.stdout
    assert "statuses: 5 queued" in out and "Statuses: 1 retrying, 4 sent" in out
    assert "attempt 2: accepted" in out  # the greylisted message, retried
    assert "    effective:  " in out and "    used:" not in out
    assert "msg.send() raised NotSupported" in out
    assert "demo --serve" in out


# -- is a worker running? -------------------------------------------------------------------


def overdue_message(minutes):
    from datetime import timedelta

    from django.utils import timezone

    from django_reliable_mail import delivery
    from django_reliable_mail.conf import get_config

    prepared = delivery.validate(
        [message()], config=get_config(), provider=None, fail_silently=False
    )
    (row,) = delivery.enqueue(prepared)
    due = timezone.now() - timedelta(minutes=minutes)
    OutboundMessage.objects.filter(pk=row.pk).update(next_attempt_at=due, status="retrying")
    return row


@pytest.mark.django_db
def test_a_stalled_queue_is_a_warning_in_the_check_the_stats_and_the_dashboard(
    settings, admin_client
):
    from django.core.management import call_command

    from django_reliable_mail.checks import check_stalled_queue

    queue_mode(settings)
    overdue_message(minutes=5)
    assert check_stalled_queue(databases=["default"]) == []  # not yet: 10 minutes
    overdue_message(minutes=11)
    (warning,) = check_stalled_queue(databases=["default"])
    assert warning.id == "reliable_mail.W016"
    assert "1 message(s) have been due for more than 10 minute(s)" in warning.msg
    assert "qcluster" in warning.hint and "reliable_mail_send" in warning.hint
    assert check_stalled_queue() == []  # only where Django asks for database checks
    out, err = io.StringIO(), io.StringIO()
    call_command("reliable_mail_stats", stdout=out, stderr=err)
    assert "is a worker running?" in err.getvalue()
    page = admin_client.get("/admin/django_reliable_mail/outboundmessage/dashboard/")
    assert b'id="stalled-queue"' in page.content and b"is a worker running?" in page.content


@pytest.mark.django_db
def test_a_worker_attempt_within_the_window_means_not_stalled(settings, smtp_server):
    from django_reliable_mail import delivery
    from django_reliable_mail.checks import check_stalled_queue

    server = smtp_server(data_reply="451 4.7.1 Try later")
    queue_mode(settings, server)
    overdue_message(minutes=30)
    delivery.deliver_due()  # a worker tried (and will retry): it is alive
    overdue_message(minutes=30)
    assert check_stalled_queue(databases=["default"]) == []
    settings.RELIABLE_MAIL = {**settings.RELIABLE_MAIL, "STALLED_QUEUE_SECONDS": 60}
    assert check_stalled_queue(databases=["default"]) == []


def test_an_unreadable_client_certificate_is_a_warning(django_email):
    django_email.EMAIL_SSL_CERTFILE = "/nonexistent/client.pem"
    (warning,) = [m for m in check_settings() if m.id == "reliable_mail.W003"]
    assert warning.msg.startswith("EMAIL_SSL_CERTFILE is '/nonexistent/client.pem'")
    EmailBackend()  # built as Django builds it: the file is read when connecting
