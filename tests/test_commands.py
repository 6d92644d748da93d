"""Management commands via call_command, asserting on output and on the database."""

import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from django_reliable_mail import signals
from django_reliable_mail.backends import EmailBackend
from django_reliable_mail.models import (
    DeliveryAttempt,
    MessageBody,
    MessageEvent,
    OutboundMessage,
)

from .helpers import PASSWORD
from .test_admin import make_message
from .test_backend import message, provider_for

pytestmark = pytest.mark.django_db
Status = OutboundMessage.Status


def run(*args):
    from io import StringIO

    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.fixture
def two_providers(settings):
    settings.RELIABLE_MAIL = {
        "DEFAULT_PROVIDER": "main",
        "MODE": "queue",
        "PROVIDERS": {
            "main": {"HOST": "127.0.0.1", "PORT": 2, "TLS": "none"},
            "backup": {"HOST": "127.0.0.1", "PORT": 3, "TLS": "none"},
        },
    }


def test_retry_dry_run_and_filters(two_providers, django_capture_on_commit_callbacks):
    failed, other = make_message(), make_message(status="sent")
    out = run("reliable_mail_retry", "--dry-run")
    assert out.strip() == f"1 message(s) would be retried: {failed.pk}"
    assert OutboundMessage.objects.get(pk=failed.pk).status == Status.FAILED
    with django_capture_on_commit_callbacks(execute=False):
        out = run(
            "reliable_mail_retry",
            "--status",
            "failed",
            "--provider",
            "main",
            "--since",
            "1h",
            "--to-provider",
            "backup",
            "--without",
            "requiretls",
        )
    assert "1 message(s) queued for another attempt through backup." in out
    failed.refresh_from_db()
    assert failed.status == Status.RETRYING and failed.provider == "backup"
    assert failed.options["disable_extensions_once"] == ["REQUIRETLS"]
    event = MessageEvent.objects.get()
    assert event.actor == "reliable_mail_retry" and event.action == "reroute"
    other.refresh_from_db()
    assert other.status == Status.SENT


def test_retry_by_id_skips_what_cannot_move(two_providers, django_capture_on_commit_callbacks):
    sent = make_message(status="sent")
    with django_capture_on_commit_callbacks(execute=False):
        out = run("reliable_mail_retry", str(sent.pk))
    assert "0 message(s) queued" in out and "1 skipped" in out


def test_retry_skips_a_message_whose_body_was_purged(
    two_providers, django_capture_on_commit_callbacks
):
    """Nothing is left to send: retrying it would hand the server an empty message."""
    slim, whole = make_message(), make_message()
    MessageBody.objects.filter(message=slim).delete()
    OutboundMessage.objects.filter(pk=slim.pk).update(size=0)
    with django_capture_on_commit_callbacks(execute=False):
        out = run("reliable_mail_retry", str(slim.pk), str(whole.pk))
    assert "1 message(s) queued" in out and "1 skipped" in out
    assert OutboundMessage.objects.get(pk=slim.pk).status == Status.FAILED
    assert OutboundMessage.objects.get(pk=whole.pk).status == Status.RETRYING


def test_retry_errors_name_the_value(two_providers):
    make_message()
    with pytest.raises(CommandError, match="Unknown provider 'nowhere'"):
        run("reliable_mail_retry", "--to-provider", "nowhere")
    with pytest.raises(CommandError, match="--since 'yesterday'"):
        run("reliable_mail_retry", "--since", "yesterday")


def test_purge(two_providers):
    old_sent, old_queued, new_failed = (
        make_message(status="sent"),
        make_message(status="queued"),
        make_message(),
    )
    long_ago = timezone.now() - timedelta(days=40)
    OutboundMessage.objects.filter(pk__in=[old_sent.pk, old_queued.pk]).update(updated_at=long_ago)
    assert "1 message(s) older than 30 day(s) would be deleted." in run(
        "reliable_mail_purge", "--dry-run"
    )
    out = run("reliable_mail_purge", "--bodies-only", "--no-progress")
    assert "1 message(s) older than 30 day(s) slimmed." in out
    slim = OutboundMessage.objects.get(pk=old_sent.pk)
    assert bytes(slim.mime) == b"" and slim.attempts.get().transcript == ""
    out = run("reliable_mail_purge", "--no-progress", "--batch", "1")
    assert "1 message(s) older than 30 day(s) deleted." in out
    assert set(OutboundMessage.objects.values_list("pk", flat=True)) == {
        old_queued.pk,
        new_failed.pk,
    }
    assert not DeliveryAttempt.objects.filter(message_id=old_sent.pk).exists()


def test_stats_table_and_json(two_providers):
    make_message()
    make_message(status="sent")
    table = run("reliable_mail_stats")
    assert "failed" in table and "550 5.7.1" in table and "main" in table
    data = json.loads(run("reliable_mail_stats", "--json"))
    assert data["by_status"] == {"failed": 1, "sent": 1}
    assert data["failure_reasons"][0]["enhanced_code"] == "5.7.1"
    assert data["success_rates"][0] == {
        "provider": "main",
        "attempts": 2,
        "accepted": 0,
        "rate": 0.0,
    }


@pytest.fixture
def probed(settings, smtp_server, tls):
    server = smtp_server(tls="starttls", users={"app": PASSWORD}, extensions=["REQUIRETLS"])
    settings.RELIABLE_MAIL = {
        "PROVIDERS": {
            "p": provider_for(
                server,
                tls[1],
                USERNAME="app",
                PASSWORD=PASSWORD,
                DISABLE_EXTENSIONS=["REQUIRETLS", "CHUNKING"],
            )
        }
    }
    return server


def test_probe_reports_what_is_offered_and_used(probed):
    out = run("reliable_mail_probe", "p")
    assert "TLSv1." in out and "AUTH: " in out
    advertised = next(line for line in out.splitlines() if line.startswith("Advertised"))
    effective = next(line for line in out.splitlines() if line.startswith("Effective"))
    assert "REQUIRETLS" in advertised and "REQUIRETLS" not in effective
    assert "DISABLE_EXTENSIONS has CHUNKING, which the server does not advertise" in out
    assert PASSWORD not in out
    assert probed.messages == []


def test_probe_json_and_send_to(probed):
    report = json.loads(
        run(
            "reliable_mail_probe",
            "p",
            "--json",
            "--send-to",
            "me@example.com",
            "--from",
            "app@example.com",
        )
    )
    assert report["ok"] and report["test_message"]["outcome"] == "accepted"
    assert probed.messages[0].rcpt_tos == ["me@example.com"]


def test_probe_fails_with_exit_code(settings, smtp_server, tls):
    server = smtp_server(tls="starttls", users={"app": PASSWORD})
    settings.RELIABLE_MAIL = {
        "PROVIDERS": {"p": provider_for(server, tls[1], USERNAME="app", PASSWORD="wrong-pw")}
    }
    with pytest.raises(SystemExit) as exit_info:
        run("reliable_mail_probe", "p")
    assert exit_info.value.code == 1
    with pytest.raises(CommandError, match="Unknown provider"):
        run("reliable_mail_probe", "q")


@pytest.mark.django_db(transaction=True)
def test_a_raising_signal_receiver_does_not_break_delivery(settings, smtp_server, caplog):
    server = smtp_server()
    settings.RELIABLE_MAIL = {"MODE": "immediate", "PROVIDERS": {"m": provider_for(server)}}
    seen = []

    def broken(sender, **kwargs):
        raise RuntimeError("receiver bug")

    def recorder(signal_name):
        def receive(sender, **kwargs):
            seen.append((signal_name, sorted(kwargs)))

        return receive

    receivers = [
        (s, recorder(n))
        for s, n in [
            (signals.message_queued, "queued"),
            (signals.attempt_finished, "attempt"),
            (signals.message_sent, "sent"),
        ]
    ]
    signals.attempt_finished.connect(broken)
    for signal_, receiver in receivers:
        signal_.connect(receiver)
    try:
        assert EmailBackend().send_messages([message()]) == 1
    finally:
        signals.attempt_finished.disconnect(broken)
        for signal_, receiver in receivers:
            signal_.disconnect(receiver)
    assert OutboundMessage.objects.get().status == Status.SENT and len(server.messages) == 1
    assert [name for name, _ in seen] == ["queued", "attempt", "sent"]
    assert ("attempt", ["attempt", "message", "signal"]) in seen
    assert "receiver bug" in caplog.text
