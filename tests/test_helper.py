"""The SMTP side in a helper process: the same results stored, and nothing lost or left
running when either process dies."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.utils import timezone

from django_reliable_mail import delivery
from django_reliable_mail.backends import EmailBackend
from django_reliable_mail.delivery.sending import _cores
from django_reliable_mail.models import DeliveryAttempt, OutboundMessage, ProviderState
from django_reliable_mail.smtp import helper

from .helpers import gone, killing_the_helper_after, slow_recording, wait_for
from .test_backend import message, provider_for
from .test_queue import queue_async, queue_config, queue_sync

pytestmark = pytest.mark.django_db(transaction=True)
Status = OutboundMessage.Status
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _sync_queue_afterwards():
    yield
    queue_sync()


def helper_config(server, smtp_process="always", **provider):
    return {
        **queue_config(main=provider_for(server, **provider)),
        "SMTP_PROCESS": smtp_process,
    }


@pytest.mark.skipif(_cores() < 2, reason="the helper process is for a second core")
def test_a_stream_sent_by_the_helper_stores_every_attempt_and_transcript(
    smtp_server, settings, tls
):
    server = smtp_server(tls="starttls", users={"shop": "s3cret-pw"})
    settings.RELIABLE_MAIL = helper_config(
        server,
        smtp_process="auto",
        CA_FILE=tls[1],
        USERNAME="shop",
        PASSWORD="s3cret-pw",
        MAX_CONNECTIONS=2,
    )
    queue_async(settings)
    EmailBackend().send_messages([message(to=[f"u{i}@example.com"]) for i in range(30)])

    summary = delivery.deliver_due(limit=10, keep_going_seconds=5)

    assert helper._shared is not None and helper._shared.alive
    assert helper._shared.wait_ready(timeout=0) and helper._shared.process.pid != os.getpid()
    assert (summary.claimed, summary.attempts, summary.sent) == (30, 30, 30)
    assert OutboundMessage.objects.filter(status=Status.SENT).count() == 30
    assert len(server.messages) == 30
    attempts = list(DeliveryAttempt.objects.all())
    assert len(attempts) == 30 and all(a.outcome == "accepted" for a in attempts)
    assert all("MAIL FROM:<app@example.com>" in a.transcript for a in attempts)
    assert any("AUTH" in a.transcript for a in attempts)
    assert not any("s3cret-pw" in a.transcript for a in attempts)
    assert all(a.auth_mechanism and a.tls_version for a in attempts)


def test_the_helper_hands_results_over_as_the_last_chunk_is_stored(
    smtp_server, settings, monkeypatch
):
    """The worker's process does nothing but the database work: instead of waiting for a
    full chunk it stores what has arrived each time it is free, up to a chunk at a time."""
    server = smtp_server(extensions=["PIPELINING"])
    settings.RELIABLE_MAIL = helper_config(server, MAX_CONNECTIONS=2)
    queue_async(settings)
    EmailBackend().send_messages([message(subject=f"m{i}") for i in range(130)])
    sizes = slow_recording(monkeypatch, chunk=40)
    assert delivery.deliver_due(limit=200).sent == 130
    assert sum(sizes) == 130 and max(sizes) <= 40
    assert len(sizes) > 4  # not only full chunks: stored while the rest was still sent
    assert OutboundMessage.objects.filter(status=Status.SENT).count() == 130


def test_without_a_stream_the_batch_stays_in_this_process(smtp_server, settings, monkeypatch):
    monkeypatch.setattr(helper, "_shared", None)
    server = smtp_server()
    settings.RELIABLE_MAIL = helper_config(server, smtp_process="auto")
    queue_async(settings)
    EmailBackend().send_messages([message()])
    delivery.deliver_due(limit=10)  # one batch, no stream: not worth a second process
    assert helper._shared is None
    assert OutboundMessage.objects.get().status == Status.SENT


def test_never_keeps_a_stream_in_this_process(smtp_server, settings, monkeypatch):
    monkeypatch.setattr(helper, "_shared", None)
    server = smtp_server()
    settings.RELIABLE_MAIL = helper_config(server, smtp_process="never")
    queue_async(settings)
    EmailBackend().send_messages([message(to=[f"u{i}@example.com"]) for i in range(5)])
    delivery.deliver_due(limit=2, keep_going_seconds=5)
    assert helper._shared is None
    assert OutboundMessage.objects.filter(status=Status.SENT).count() == 5


def test_a_helper_that_dies_mid_batch_gives_every_message_back(smtp_server, settings, caplog):
    server = smtp_server(reply_delay=0.3)  # each final reply takes 0.3 s
    settings.RELIABLE_MAIL = helper_config(
        server, MAX_CONNECTIONS=1, RETRY={"BASE_SECONDS": 0.01, "JITTER": 0}
    )
    queue_async(settings)
    EmailBackend().send_messages([message(to=[f"u{i}@example.com"]) for i in range(6)])

    with killing_the_helper_after(server, bodies=2):
        summary = delivery.deliver_due(limit=10)
    assert summary.recovered >= 1
    assert "helper process stopped in the middle of a batch" in caplog.text

    rows = list(OutboundMessage.objects.all())
    assert len(rows) == 6
    assert not [r.pk for r in rows if r.status == Status.SENDING]  # none left waiting a lease
    by_status = {r.pk: r.status for r in rows}
    unknown = DeliveryAttempt.objects.filter(outcome="unknown")
    # A body on the wire when the helper died, or marked ahead of it: possibly delivered.
    assert unknown.exists() and all(a.possible_duplicate for a in unknown)
    for attempt in unknown:
        assert by_status[attempt.message_id] == Status.RETRYING
    # Everything the server has was either stored as sent, or is flagged as possibly sent.
    accepted = {a.message_id for a in DeliveryAttempt.objects.filter(outcome="accepted")}
    assert len(server.messages) <= len(accepted) + unknown.count()

    # None of them is due again at once: the provider pauses, as after a provider-level
    # failure, and the returned messages wait for the pause to end.
    pause_end = ProviderState.objects.get(name="main").degraded_until
    assert pause_end > timezone.now()
    assert delivery.deliver_due(limit=10).claimed == 0
    waiting = [r for r in OutboundMessage.objects.all() if r.status != Status.SENT]
    assert waiting and all(r.next_attempt_at >= pause_end for r in waiting)

    # After the pause, the next batch starts a new helper and finishes the job.
    ProviderState.objects.update(degraded_until=None)
    OutboundMessage.objects.exclude(status=Status.SENT).update(next_attempt_at=timezone.now())
    delivery.deliver_due(limit=10)
    assert OutboundMessage.objects.filter(status=Status.SENT).count() == 6


def test_without_a_python_to_start_the_helper_the_batch_is_sent_from_here(
    smtp_server, settings, monkeypatch, caplog
):
    monkeypatch.setattr(helper, "_shared", None)
    monkeypatch.setattr(sys, "executable", "/nonexistent/uwsgi")
    server = smtp_server()
    settings.RELIABLE_MAIL = helper_config(server)
    queue_async(settings)
    EmailBackend().send_messages([message(to=[f"u{i}@example.com"]) for i in range(3)])
    assert delivery.deliver_due(limit=10, keep_going_seconds=1).sent == 3
    assert "no SMTP helper process" in caplog.text and helper._shared is None


def test_a_batch_that_finds_the_helper_busy_sends_from_its_own_thread(
    smtp_server, settings, monkeypatch
):
    """One helper serves one batch at a time: another thread's batch meanwhile (a threaded
    process with SMTP_PROCESS "always") sends beside its own thread instead."""
    from django_reliable_mail.delivery import sending

    server = smtp_server()
    settings.RELIABLE_MAIL = helper_config(server)
    queue_async(settings)
    EmailBackend().send_messages([message(to=[f"u{i}@example.com"]) for i in range(3)])
    beside = []
    run_beside = sending._run_beside
    monkeypatch.setattr(sending, "_run_beside", lambda *args: beside.append(1) or run_beside(*args))
    busy = helper.shared_helper()
    with busy.lock:  # another thread's batch
        assert delivery.deliver_due(limit=10).sent == 3
    assert beside == [1] and busy.alive
    EmailBackend().send_messages([message()])
    assert delivery.deliver_due(limit=10).sent == 1
    assert beside == [1]  # free again: through the helper


def test_the_helper_exits_when_its_worker_is_killed():
    code = (
        "from django_reliable_mail.smtp.helper import SMTPHelper\n"
        "import time\n"
        "h = SMTPHelper()\n"
        "print(h.process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    pid = int(worker.stdout.readline())
    assert not gone(pid)
    worker.send_signal(signal.SIGKILL)
    worker.communicate()
    wait_for(lambda: gone(pid), timeout=5)
