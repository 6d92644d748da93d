"""A provider whose sessions fail before any reply can be classified backs off: a few
connections, growing pauses, no attempt used up; ``reliable_mail_send --loop`` outlives
every fault and still stops when told to."""

import logging
import os
import signal
import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import OperationalError
from django.utils import timezone

from django_reliable_mail import delivery
from django_reliable_mail.backends import EmailBackend
from django_reliable_mail.models import DeliveryAttempt, OutboundMessage, ProviderState

from .helpers import killing_the_helper_after
from .hostile import DISCONNECT, GARBAGE, send
from .test_backend import message, provider_for
from .test_queue import queue_async, queue_config

pytestmark = pytest.mark.django_db(transaction=True)
Status = OutboundMessage.Status

#: What a broken provider does on accept: close at once, or greet with garbage.
BROKEN = {
    "closes": {"greeting": DISCONNECT},
    "garbage": {"greeting": send(GARBAGE)},
}


def broken_config(server, smtp_process, **extra):
    return {
        **queue_config(main=provider_for(server, **{"MAX_CONNECTIONS": 2, **extra})),
        "SMTP_PROCESS": smtp_process,
    }


def send_loop(*args, within=30):
    """Run ``reliable_mail_send --loop`` here; it fails the test if still running after
    ``within`` seconds (a loop that never idles must not hang the suite)."""

    def too_long(signum, frame):
        raise AssertionError(f"reliable_mail_send --loop still running after {within} s")

    out = StringIO()
    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(within)
    try:
        call_command("reliable_mail_send", "--no-progress", "--loop", *args, stdout=out)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return out.getvalue()


def pause_left():
    state = ProviderState.objects.get(name="main")
    return state.consecutive_failures, (state.degraded_until - timezone.now()).total_seconds()


@pytest.mark.parametrize("smtp_process", ["always", "never"])
@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_a_broken_provider_gets_a_few_connections_not_hundreds(
    hostile_server, settings, caplog, smtp_process, broken
):
    server = hostile_server(always=BROKEN[broken])
    settings.RELIABLE_MAIL = broken_config(server, smtp_process)
    queue_async(settings)
    EmailBackend().send_messages([message(subject=f"m{i}") for i in range(5)])

    # --idle-exit works while the provider is paused.
    out = send_loop("--idle-exit", "2", "--interval", "0.05", "--keep-going", "1")
    assert out.startswith("0 attempt(s)") or "0 sent" in out

    assert server.log.connections <= 2  # one batch, its connections; then the pause
    failures, left = pause_left()
    assert failures == 1 and 20 < left <= 30
    rows = list(OutboundMessage.objects.all())
    # None in sending, none failed: waiting, "retrying" those with a provider-level attempt.
    assert {r.status for r in rows} <= {Status.QUEUED, Status.RETRYING}
    assert {r.attempt_count for r in rows} == {0}  # no attempt used up
    assert all(r.next_attempt_at > timezone.now() for r in rows if not r.attempts.exists())
    assert all(a.provider_level for a in DeliveryAttempt.objects.all())

    # The pause ends; the provider is still broken: it pauses again, for longer.
    ProviderState.objects.update(degraded_until=timezone.now() - timedelta(seconds=1))
    OutboundMessage.objects.update(next_attempt_at=timezone.now())
    send_loop("--idle-exit", "1", "--interval", "0.05", "--keep-going", "1")
    assert server.log.connections <= 4
    failures, longer = pause_left()
    assert failures == 2 and longer > 45
    assert set(OutboundMessage.objects.values_list("attempt_count", flat=True)) == {0}


@pytest.mark.parametrize("smtp_process", ["always", "never"])
def test_a_server_that_drops_every_connection_at_ehlo_uses_no_attempts(
    hostile_server, settings, smtp_process
):
    """The session classifies a connection lost during set-up as the message's transient
    failure; no reply said anything about the message, so the delivery side takes it as the
    provider's: one connection, a pause, no attempt used."""
    server = hostile_server(always={"ehlo": DISCONNECT})
    settings.RELIABLE_MAIL = broken_config(server, smtp_process, MAX_CONNECTIONS=1)
    queue_async(settings)
    EmailBackend().send_messages([message(subject=f"m{i}") for i in range(20)])
    summary = delivery.deliver_due(limit=20, keep_going_seconds=1)
    assert server.log.connections == 1 and summary.attempts == 1
    assert set(OutboundMessage.objects.values_list("attempt_count", flat=True)) == {0}
    assert DeliveryAttempt.objects.get().provider_level
    assert pause_left()[0] == 1


def test_a_pass_that_raises_does_not_end_the_loop(smtp_server, settings, caplog, monkeypatch):
    server = smtp_server()
    settings.RELIABLE_MAIL = queue_config(main=provider_for(server))
    queue_async(settings)
    EmailBackend().send_messages([message() for _ in range(3)])
    recover = delivery.recover_expired_leases
    calls = []

    def flaky(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("the database restarted")
        return recover(**kwargs)

    monkeypatch.setattr(delivery, "recover_expired_leases", flaky)
    with caplog.at_level(logging.ERROR):
        out = send_loop("--idle-exit", "0.2", "--interval", "0.05")
    assert "the database restarted" in caplog.text and "1 in a row" in caplog.text
    assert "3 sent" in out and len(server.messages) == 3
    assert len(calls) >= 2


def test_sigterm_stops_the_loop_even_while_it_backs_off(smtp_server, settings, monkeypatch):
    server = smtp_server()
    settings.RELIABLE_MAIL = queue_config(main=provider_for(server))
    queue_async(settings)
    failed = threading.Event()

    def broken(**kwargs):
        failed.set()
        raise OperationalError("the database is gone for good")

    monkeypatch.setattr(delivery, "recover_expired_leases", broken)
    previous = signal.getsignal(signal.SIGTERM)

    def terminate():
        failed.wait(10)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate)
    killer.start()
    try:
        # No --idle-exit: only the signal ends it, and at once, not after a back-off's wait.
        send_loop("--interval", "0.05", within=5)
    finally:
        killer.join()  # its signal is handled by the command's handler, even if it ended
        signal.signal(signal.SIGTERM, previous)


def test_a_helper_that_crashes_mid_batch_returns_messages_not_due_under_the_policy(
    smtp_server, settings
):

    server = smtp_server(reply_delay=0.3)
    settings.RELIABLE_MAIL = {
        **queue_config(
            main=provider_for(
                server, MAX_CONNECTIONS=1, RETRY={"MAX_ATTEMPTS": 1, "BASE_SECONDS": 0.01}
            )
        ),
        "SMTP_PROCESS": "always",
    }
    queue_async(settings)
    EmailBackend().send_messages([message(to=[f"u{i}@example.com"]) for i in range(6)])

    with killing_the_helper_after(server, bodies=1):
        summary = delivery.deliver_due(limit=10)
    assert summary.recovered >= 1
    assert not OutboundMessage.objects.filter(status=Status.SENDING).exists()
    pause_end = ProviderState.objects.get(name="main").degraded_until
    assert pause_end > timezone.now()
    assert delivery.deliver_due(limit=10).claimed == 0  # nothing due at once
    for row in OutboundMessage.objects.exclude(status=Status.SENT):
        attempts = list(row.attempts.values_list("outcome", "possible_duplicate"))
        if attempts:
            # A marked body, maybe delivered: one unknown attempt, and MAX_ATTEMPTS is 1.
            assert attempts == [("unknown", True)]
            assert row.status == Status.FAILED and "MAX_ATTEMPTS is 1" in row.last_error
        else:
            assert row.status == Status.QUEUED and row.next_attempt_at >= pause_end


@pytest.mark.parametrize("by_ids", [False, True])
def test_one_providers_failed_batch_does_not_stop_the_others(
    hostile_server, smtp_server, settings, by_ids
):
    broken, good = hostile_server(always={"greeting": send(GARBAGE)}), smtp_server()
    settings.RELIABLE_MAIL = {
        "DEFAULT_PROVIDER": "broken",
        "MODE": "queue",
        "SMTP_PROCESS": "never",
        "PROVIDERS": {"broken": provider_for(broken), "good": provider_for(good)},
    }
    queue_async(settings)
    mails = [message(subject=f"m{i}") for i in range(4)]
    for mail in mails[2:]:
        mail.reliable_mail = {"provider": "good"}
    EmailBackend().send_messages(mails)
    if by_ids:
        summary = delivery.deliver_messages(OutboundMessage.objects.values_list("pk", flat=True))
    else:
        summary = delivery.deliver_due(limit=10)
    assert summary.sent == 2 and len(good.messages) == 2
    by_provider = dict(OutboundMessage.objects.values_list("subject", "status"))
    # The broken provider's messages wait (its garbage greeting is recorded as a
    # provider-level attempt, which uses none of theirs up); the good one's went out.
    assert by_provider == {"m0": "retrying", "m1": "retrying", "m2": "sent", "m3": "sent"}
    assert set(
        OutboundMessage.objects.filter(subject__in=["m0", "m1"]).values_list(
            "attempt_count", flat=True
        )
    ) == {0}
    assert not DeliveryAttempt.objects.filter(
        message__subject__in=["m0", "m1"], provider_level=False
    ).exists()
    assert list(ProviderState.objects.filter(degraded_until__isnull=False).values_list("name")) == [
        ("broken",)
    ]
