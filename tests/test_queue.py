"""Queue mode in one process: outbox, claiming, leases, provider health, batching, retries."""

import logging
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from django_reliable_mail import delivery, tasks
from django_reliable_mail.backends import EmailBackend
from django_reliable_mail.checks import check_q_cluster
from django_reliable_mail.conf import get_config
from django_reliable_mail.exceptions import ReliableMailConfigError
from django_reliable_mail.models import (
    DeliveryAttempt,
    MessageEvent,
    OutboundMessage,
    ProviderState,
)

from .helpers import PASSWORD, expired_leases_seen_before_each_send, slow_recording
from .test_backend import message, provider_for

pytestmark = pytest.mark.django_db(transaction=True)
Status = OutboundMessage.Status


def queue_config(**providers):
    return {"DEFAULT_PROVIDER": next(iter(providers)), "PROVIDERS": providers, "MODE": "queue"}


def fast_retry(**extra):
    return {"RETRY": {"BASE_SECONDS": 0.01, "JITTER": 0, "MAX_ATTEMPTS": 5}, **extra}


def queue_async(settings=None):
    """Tasks go to the ORM broker instead of running inline (django-q2 reads its settings
    once, at import, so the switch is on its Conf)."""
    from django_q.conf import Conf

    Conf.SYNC = False


def queue_sync():
    from django_q.conf import Conf

    Conf.SYNC = True


@pytest.fixture(autouse=True)
def _restore_sync():
    yield
    queue_sync()


def make_due():
    OutboundMessage.objects.filter(status__in=[Status.RETRYING, Status.QUEUED]).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )


def test_queue_mode_wakes_the_worker_after_commit(smtp_server):
    server = smtp_server()
    with override_settings(RELIABLE_MAIL=queue_config(main=provider_for(server))):
        with transaction.atomic():
            assert EmailBackend().send_messages([message(), message()]) == 2
            assert server.messages == []  # nothing leaves before the commit
            assert OutboundMessage.objects.filter(status=Status.QUEUED).count() == 2
    assert len(server.messages) == 2  # Q_CLUSTER sync: the woken task ran at commit
    assert set(OutboundMessage.objects.values_list("status", flat=True)) == {Status.SENT}


def test_rollback_queues_nothing_and_sends_nothing(smtp_server):
    from django_q.models import OrmQ

    server = smtp_server()
    with override_settings(RELIABLE_MAIL=queue_config(main=provider_for(server))):
        with pytest.raises(RuntimeError), transaction.atomic():
            EmailBackend().send_messages([message()])
            raise RuntimeError("the request failed after send_mail")
    assert OutboundMessage.objects.count() == 0 and OrmQ.objects.count() == 0
    assert server.messages == []


def test_a_lost_wake_up_is_recovered_by_the_dispatcher(smtp_server, settings):
    from django_q.models import OrmQ

    server = smtp_server()
    settings.RELIABLE_MAIL = queue_config(main=provider_for(server))
    queue_async(settings)
    EmailBackend().send_messages([message()])
    assert OrmQ.objects.count() == 1
    OrmQ.objects.all().delete()  # the broker lost the task
    queue_sync()
    result = tasks.dispatch()
    assert "queued 1 delivery task" in result
    assert len(server.messages) == 1
    assert OutboundMessage.objects.get().status == Status.SENT


def test_the_dispatcher_schedule_is_created_once():
    import importlib

    from django.apps import apps
    from django_q.models import Schedule

    migration = importlib.import_module("django_reliable_mail.migrations.0003_dispatch_schedule")
    migration.create_schedule(apps, None)
    migration.create_schedule(apps, None)  # migrating again (or from a second host)
    schedule = Schedule.objects.get(name=tasks.DISPATCH_SCHEDULE_NAME)
    assert schedule.func == "django_reliable_mail.tasks.dispatch"
    assert (schedule.schedule_type, schedule.minutes, schedule.repeats) == ("I", 1, -1)


def test_only_one_claim_wins(settings):
    settings.RELIABLE_MAIL = queue_config(main={"HOST": "127.0.0.1", "PORT": 2, "TLS": "none"})
    queue_async(settings)
    EmailBackend().send_messages([message()])
    config = get_config()
    first = delivery.claim(config=config)
    second = delivery.claim(config=config)
    assert len(first) == 1 and second == []
    row = OutboundMessage.objects.get()
    assert row.status == Status.SENDING and row.lease_expires_at > timezone.now()


def test_send_at_and_priority(settings):
    settings.RELIABLE_MAIL = queue_config(main={"HOST": "127.0.0.1", "PORT": 2, "TLS": "none"})
    queue_async(settings)
    later, low, high = message(subject="later"), message(subject="low"), message(subject="high")
    later.reliable_mail = {"send_at": timezone.now() + timedelta(hours=1)}
    high.reliable_mail = {"priority": 9}
    EmailBackend().send_messages([later, low, high])
    config = get_config()
    assert [m.subject for m in delivery.claim(config=config, limit=1)] == ["high"]
    assert [m.subject for m in delivery.claim(config=config, limit=5)] == ["low"]


def test_expired_lease_before_the_body_is_simply_requeued(settings):
    settings.RELIABLE_MAIL = queue_config(main={"HOST": "127.0.0.1", "PORT": 2, "TLS": "none"})
    queue_async(settings)
    EmailBackend().send_messages([message()])
    delivery.claim(config=get_config())
    OutboundMessage.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert delivery.recover_expired_leases() == 1
    row = OutboundMessage.objects.get()
    assert row.status == Status.QUEUED and row.attempts.count() == 0


@pytest.mark.parametrize("policy", ["retry", "hold"])
def test_expired_lease_after_the_body_is_unknown(settings, policy):
    settings.RELIABLE_MAIL = {
        **queue_config(main={"HOST": "127.0.0.1", "PORT": 2, "TLS": "none"}),
        "UNKNOWN_OUTCOME": policy,
    }
    queue_async(settings)
    EmailBackend().send_messages([message()])
    delivery.claim(config=get_config())
    OutboundMessage.objects.update(
        lease_expires_at=timezone.now() - timedelta(seconds=1), body_started_at=timezone.now()
    )
    assert delivery.recover_expired_leases() == 1
    row = OutboundMessage.objects.get()
    attempt = row.attempts.get()
    assert attempt.outcome == DeliveryAttempt.Outcome.UNKNOWN and attempt.possible_duplicate
    assert row.recipient_statuses.get().state == "unknown"
    assert row.status == (Status.RETRYING if policy == "retry" else Status.HELD)
    if policy == "retry":
        # The next attempt is numbered after the unknown one and inherits its flag.
        make_due()
        delivery.deliver_due()
        attempts = list(row.attempts.order_by("number").values_list("number", "possible_duplicate"))
        assert attempts == [(1, True), (2, True)]


def test_a_broken_provider_does_not_burn_attempts(smtp_server, tls, settings):
    server = smtp_server(tls="starttls", users={"app": PASSWORD})
    bad = provider_for(
        server, tls[1], USERNAME="app", PASSWORD="wrong-one", MAX_CONNECTIONS=1, **fast_retry()
    )
    settings.RELIABLE_MAIL = queue_config(main=bad)
    queue_async(settings)
    EmailBackend().send_messages([message() for _ in range(5)])
    summary = delivery.deliver_due()
    assert summary.attempts == 1 and summary.released == 4
    assert OutboundMessage.objects.filter(attempt_count=0).count() == 5
    state = ProviderState.objects.get(name="main")
    assert state.degraded_until > timezone.now() and "535" in state.degraded_reason
    make_due()
    assert delivery.deliver_due().claimed == 0  # paused, not burning attempts
    # the password is fixed and the pause ends: everything goes, nothing counted twice
    settings.RELIABLE_MAIL = queue_config(main={**bad, "PASSWORD": PASSWORD})
    ProviderState.objects.update(degraded_until=timezone.now() - timedelta(seconds=1))
    make_due()
    assert delivery.deliver_due().sent == 5
    assert len(server.messages) == 5
    assert set(OutboundMessage.objects.values_list("attempt_count", flat=True)) == {1}
    assert ProviderState.objects.get(name="main").consecutive_failures == 0


def test_batches_reuse_connections(smtp_server, settings):
    server = smtp_server()
    settings.RELIABLE_MAIL = queue_config(
        main=provider_for(server, MAX_CONNECTIONS=1, MAX_MESSAGES_PER_CONNECTION=4)
    )
    queue_async(settings)
    EmailBackend().send_messages([message(subject=f"m{i}") for i in range(10)])
    summary = delivery.deliver_due()
    assert summary.sent == 10 and summary.connections == 3
    assert server.log.connections == 3
    # A completed transaction needs no RSET before the next MAIL (RFC 5321 §4.1.4).
    assert server.log.commands.count("RSET") == 0
    assert sum(c.startswith("MAIL") for c in server.log.commands) == 10
    first, second = (a.transcript for a in DeliveryAttempt.objects.order_by("id")[:2])
    assert "EHLO" in first and "reusing connection" in second and "EHLO" not in second


def test_parallel_connections(smtp_server, settings):
    server = smtp_server(reply_delay=0.05)
    settings.RELIABLE_MAIL = queue_config(main=provider_for(server, MAX_CONNECTIONS=4))
    queue_async(settings)
    EmailBackend().send_messages([message() for _ in range(8)])
    summary = delivery.deliver_due()
    assert summary.sent == 8 and server.log.connections == 4


def test_greylisted_mail_is_retried_until_delivered(smtp_server, settings):
    server = smtp_server(greylist=True)
    settings.RELIABLE_MAIL = queue_config(main=provider_for(server, **fast_retry()))
    queue_async(settings)
    EmailBackend().send_messages([message(to=[f"u{i}@example.com"]) for i in range(3)])
    assert delivery.deliver_due().retrying == 3
    make_due()
    assert delivery.deliver_due().sent == 3
    assert len(server.messages) == 3
    assert list(OutboundMessage.objects.values_list("attempt_count", flat=True)) == [2, 2, 2]


def test_max_attempts_then_failed(smtp_server, settings):
    server = smtp_server(data_reply="451 4.3.0 Temporary trouble")
    settings.RELIABLE_MAIL = queue_config(
        main=provider_for(server, RETRY={"BASE_SECONDS": 0.01, "JITTER": 0, "MAX_ATTEMPTS": 3})
    )
    queue_async(settings)
    EmailBackend().send_messages([message()])
    for _ in range(3):
        make_due()
        delivery.deliver_due()
    row = OutboundMessage.objects.get()
    assert row.status == Status.FAILED and row.attempts.count() == 3
    assert "gave up after 3 attempt(s)" in row.last_error


def test_idempotency_key_stores_one_message(settings):
    settings.RELIABLE_MAIL = queue_config(main={"HOST": "127.0.0.1", "PORT": 2, "TLS": "none"})
    queue_async(settings)
    for _ in range(2):
        msg = message()
        msg.reliable_mail = {"idempotency_key": "reset-42"}
        assert EmailBackend().send_messages([msg]) == 1
    twin_a, twin_b = message(), message()
    twin_a.reliable_mail = twin_b.reliable_mail = {"idempotency_key": "receipt-7"}
    EmailBackend().send_messages([twin_a, twin_b])
    assert OutboundMessage.objects.count() == 2


def test_rate_limit_paces_sends(smtp_server, settings):
    server = smtp_server()
    settings.RELIABLE_MAIL = queue_config(main=provider_for(server, RATE_LIMIT="20/s"))
    queue_async(settings)
    EmailBackend().send_messages([message() for _ in range(6)])
    delivery.deliver_due()
    # The limit paces the start of each transaction (MAIL); when each is accepted also
    # depends on its body-start mark, which one message may wait for and the next not.
    gaps = [b - a for a, b in zip(server.mail_at, server.mail_at[1:], strict=False)]
    assert len(server.accepted_at) == 6 and len(server.mail_at) == 6
    assert min(gaps) >= 0.05 * 0.8  # one slot every 50 ms (small clock slack)


def test_a_secret_argument_cannot_reach_a_queue_worker(settings):
    settings.RELIABLE_MAIL = queue_config(main={"HOST": "127.0.0.1", "PORT": 2, "TLS": "none"})
    with pytest.raises(ReliableMailConfigError) as excinfo:
        EmailBackend(username="u", password="p-Secret")
    text = str(excinfo.value)
    assert "'password'" in text and "never stored" in text and "p-Secret" not in text
    assert "RELIABLE_MAIL['PROVIDERS']['main']['PASSWORD']" in text


def test_send_command(smtp_server, settings, capsys):
    server = smtp_server(greylist=True)
    settings.RELIABLE_MAIL = queue_config(main=provider_for(server, **fast_retry()))
    queue_async(settings)
    EmailBackend().send_messages([message(to=[f"c{i}@example.com"]) for i in range(4)])
    call_command("reliable_mail_send", "--loop", "--idle-exit", "1", "--interval", "0.05")
    out = capsys.readouterr().out
    assert "8 attempt(s)" in out and "4 sent" in out
    assert len(server.messages) == 4
    with pytest.raises(CommandError, match="Unknown provider 'nope'"):
        call_command("reliable_mail_send", "--provider", "nope")


def test_q_cluster_checks(settings):
    settings.RELIABLE_MAIL = queue_config(main={"HOST": "h", "PORT": 587})
    assert check_q_cluster() == []
    settings.Q_CLUSTER = {"name": "x", "orm": "default"}
    ids = [m.id for m in check_q_cluster()]
    assert ids == [
        "reliable_mail.W010",
        "reliable_mail.W012",
        "reliable_mail.W013",
        "reliable_mail.W014",
    ]
    settings.Q_CLUSTER = {
        "timeout": 300,
        "retry": 60,
        "max_attempts": 1,
        "ack_failures": True,
        "catch_up": False,
    }
    assert [m.id for m in check_q_cluster()] == ["reliable_mail.W011"]


def test_failover_to_the_fallback_provider(smtp_server, tls, settings):
    primary = smtp_server(tls="starttls", users={"app": PASSWORD})
    backup = smtp_server()
    settings.RELIABLE_MAIL = {
        "DEFAULT_PROVIDER": "primary",
        "MODE": "queue",
        "PROVIDERS": {
            "primary": provider_for(
                primary,
                tls[1],
                USERNAME="app",
                PASSWORD="expired",
                MAX_CONNECTIONS=1,
                FALLBACK="backup",
            ),
            "backup": provider_for(backup),
        },
    }
    queue_async(settings)
    EmailBackend().send_messages([message(subject=f"m{i}") for i in range(3)])
    first = delivery.deliver_due()
    assert first.attempts == 1 and first.released == 2
    assert set(OutboundMessage.objects.values_list("provider", flat=True)) == {"backup"}
    second = delivery.deliver_due()
    assert second.sent == 3 and len(backup.messages) == 3 and primary.messages == []
    carried = list(
        DeliveryAttempt.objects.order_by("message_id", "number").values_list(
            "message__subject", "provider", "outcome"
        )
    )
    assert carried[:2] == [("m0", "primary", "config_error"), ("m0", "backup", "accepted")]
    assert {p for _, p, _ in carried[2:]} == {"backup"}
    assert MessageEvent.objects.filter(actor="failover").count() == 3


def queued_tasks():
    from django_q.models import OrmQ
    from django_q.signing import SignedPackage

    return [SignedPackage.loads(row.payload) for row in OrmQ.objects.order_by("id")]


def test_a_burst_of_sends_queues_one_wake_up(smtp_server, settings):
    from django_q.models import OrmQ

    server = smtp_server()
    settings.RELIABLE_MAIL = queue_config(main=provider_for(server))
    queue_async(settings)
    for _ in range(5):
        EmailBackend().send_messages([message()])
    assert [t["func"] for t in queued_tasks()] == ["django_reliable_mail.tasks.deliver_pending"]
    # A worker takes the task: its lock moves into the future, so it no longer covers
    # messages sent from now on, and the next send queues a new wake-up.
    OrmQ.objects.update(lock=timezone.now() + timedelta(seconds=60))
    EmailBackend().send_messages([message()])
    assert OrmQ.objects.count() == 2
    queue_sync()
    assert tasks.deliver_pending() == "6 attempt(s), 6 sent"
    assert len(server.messages) == 6


def test_a_rolled_back_send_leaves_the_pending_wake_up_alone(settings):
    settings.RELIABLE_MAIL = queue_config(main={"HOST": "127.0.0.1", "PORT": 2, "TLS": "none"})
    queue_async(settings)
    with pytest.raises(RuntimeError), transaction.atomic():
        EmailBackend().send_messages([message()])
        raise RuntimeError("rolled back")
    EmailBackend().send_messages([message()])
    assert len(queued_tasks()) == 1 and OutboundMessage.objects.count() == 1


def test_a_full_batch_queues_a_second_wake_up_for_another_worker(smtp_server, settings):
    server = smtp_server()
    settings.RELIABLE_MAIL = queue_config(main=provider_for(server))
    queue_async(settings)
    EmailBackend().send_messages([message() for _ in range(5)])
    before = len(queued_tasks())
    # This worker streams batch after batch; another one was asked to share the queue.
    assert tasks.deliver_pending(limit=2) == "5 attempt(s), 5 sent"
    assert len(queued_tasks()) == before + 1
    assert tasks.deliver_pending(limit=2) == "0 attempt(s), 0 sent"  # the helper finds none
    assert len(queued_tasks()) == before + 1


def test_a_wake_up_row_id_reused_by_another_task_does_not_count(settings):
    from django_q.models import OrmQ

    settings.RELIABLE_MAIL = queue_config(main={"HOST": "127.0.0.1", "PORT": 2, "TLS": "none"})
    queue_async(settings)
    EmailBackend().send_messages([message()])
    ours = OrmQ.objects.get()
    row_id = ours.pk
    ours.delete()  # acknowledged by a worker
    # Another task gets the same id (a database that reuses ids after a restart).
    OrmQ.objects.create(id=row_id, key=ours.key, payload="someone else's task", lock=ours.lock)
    EmailBackend().send_messages([message()])
    assert OrmQ.objects.count() == 2


def test_a_stream_claims_the_next_batches_over_the_same_connection(smtp_server, settings):
    server = smtp_server()
    settings.RELIABLE_MAIL = queue_config(main=provider_for(server, MAX_CONNECTIONS=1))
    queue_async(settings)
    EmailBackend().send_messages([message(subject=f"m{i}") for i in range(9)])
    assert delivery.deliver_due(limit=2).claimed == 2  # without keep_going: one batch
    summary = delivery.deliver_due(limit=2, keep_going_seconds=30)
    assert (summary.claimed, summary.sent, summary.connections) == (7, 7, 1)
    assert server.log.connections == 2  # one for the single batch, one for the stream
    assert set(OutboundMessage.objects.values_list("status", flat=True)) == {Status.SENT}
    assert set(DeliveryAttempt.objects.values_list("number", flat=True)) == {1}
    assert DeliveryAttempt.objects.count() == 9


def test_a_stream_stops_claiming_at_its_deadline(smtp_server, settings):
    server = smtp_server()
    settings.RELIABLE_MAIL = queue_config(main=provider_for(server, MAX_CONNECTIONS=1))
    queue_async(settings)
    EmailBackend().send_messages([message() for _ in range(5)])
    summary = delivery.deliver_due(limit=2, keep_going_seconds=1e-9)
    assert summary.claimed == summary.sent == 2
    assert OutboundMessage.objects.filter(status=Status.QUEUED).count() == 3


def test_a_stream_hands_back_messages_that_need_other_connections(smtp_server, settings):
    server = smtp_server()
    settings.RELIABLE_MAIL = queue_config(main=provider_for(server, MAX_CONNECTIONS=1))
    queue_async(settings)
    EmailBackend().send_messages([message(subject=f"m{i}") for i in range(6)])
    # An operator's "retry once without PIPELINING" on the last three: another session setup.
    others = list(OutboundMessage.objects.order_by("id").values_list("pk", flat=True))[3:]
    OutboundMessage.objects.filter(pk__in=others).update(
        options={delivery.DISABLE_ONCE: ["PIPELINING"]}
    )
    summary = delivery.deliver_due(limit=2, keep_going_seconds=30)
    assert summary.sent == 3
    waiting = OutboundMessage.objects.filter(pk__in=others)
    assert {(m.status, m.attempt_count) for m in waiting} == {(Status.QUEUED, 0)}
    assert delivery.deliver_due(limit=10).sent == 3
    assert OutboundMessage.objects.filter(status=Status.SENT).count() == 6


def test_a_provider_failure_ends_the_stream_and_hands_everything_back(smtp_server, tls, settings):
    server = smtp_server(tls="starttls", users={"app": PASSWORD})
    bad = provider_for(server, tls[1], USERNAME="app", PASSWORD="wrong-one", MAX_CONNECTIONS=1)
    settings.RELIABLE_MAIL = queue_config(main=bad)
    queue_async(settings)
    EmailBackend().send_messages([message() for _ in range(6)])
    summary = delivery.deliver_due(limit=2, keep_going_seconds=30)
    assert summary.attempts == 1 and summary.sent == 0
    assert not OutboundMessage.objects.filter(status=Status.SENDING).exists()
    assert OutboundMessage.objects.filter(attempt_count=0).count() == 6
    assert summary.released == summary.claimed - 1


def test_a_stream_renews_the_leases_of_what_it_claimed_later(smtp_server, settings, monkeypatch):

    server = smtp_server()
    paced = provider_for(server, MAX_CONNECTIONS=1, RATE_LIMIT="4/s")
    settings.RELIABLE_MAIL = {**queue_config(main=paced), "LEASE_SECONDS": 1}
    queue_async(settings)
    EmailBackend().send_messages([message() for _ in range(8)])  # about 2 s: two leases
    expired = expired_leases_seen_before_each_send(monkeypatch)
    summary = delivery.deliver_due(limit=2, keep_going_seconds=30)
    assert summary.sent == 8
    assert expired == []


def test_a_failing_recorder_ends_the_stream_and_its_messages_come_back(
    smtp_server, settings, monkeypatch, caplog
):
    """A store call that raises (here not a refused row, which recording survives) aborts
    the batch: logged, not raised; nothing stays in sending; what went out unrecorded is
    flagged; nothing is due again before the provider's pause ends."""
    import signal

    from django_reliable_mail.delivery import sending

    def hung(signum, frame):
        raise AssertionError("the stream hung after the recorder failed")

    server = smtp_server(extensions=["PIPELINING"])
    settings.RELIABLE_MAIL = queue_config(main=provider_for(server, MAX_CONNECTIONS=1))
    queue_async(settings)
    EmailBackend().send_messages([message() for _ in range(400)])
    monkeypatch.setattr(sending, "RECORD_CHUNK", 10)

    def broken_record(items, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(sending, "record_batch", broken_record)
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        summary = delivery.deliver_due(limit=20, keep_going_seconds=60)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert "the database went away" in caplog.text and summary.attempts == 0
    assert not OutboundMessage.objects.filter(status=Status.SENDING).exists()
    unknown = DeliveryAttempt.objects.filter(outcome="unknown")
    assert all(a.possible_duplicate for a in unknown)
    assert len(server.messages) <= unknown.count()  # every copy out there is flagged
    assert OutboundMessage.objects.filter(status=Status.QUEUED).count() > 0
    assert ProviderState.objects.get(name="main").degraded_until > timezone.now()
    assert not delivery.due_messages(now=timezone.now()).exists()


def test_one_statement_enqueue_stores_what_the_general_path_stores(settings):
    """PostgreSQL stores a lone send_mail() in one statement; the rows must not differ."""
    from django.forms.models import model_to_dict

    settings.RELIABLE_MAIL = queue_config(main={"HOST": "127.0.0.1", "PORT": 2, "TLS": "none"})
    queue_async(settings)
    mail = message(to=["b@example.com", "a@example.com"], cc=["c@example.com"])
    mail.reliable_mail = {"priority": 3, "tags": ["reset"], "metadata": {"user": 7}}
    prepared = delivery.validate([mail], config=get_config(), provider=None, fail_silently=False)
    if not delivery.enqueues_in_one_statement(prepared):
        pytest.skip("one-statement enqueue is for PostgreSQL")
    one, _ = delivery.enqueue_in_one_statement(prepared[0], mailer=None, wake_check=None)
    (general,) = delivery.enqueue(prepared, mailer=None)
    skip = {"id", "created_at", "updated_at", "next_attempt_at"}

    def stored(pk):
        row = OutboundMessage.objects.get(pk=pk)
        fields = {k: v for k, v in model_to_dict(row).items() if k not in skip}
        fields["mime"] = bytes(row.mime)
        recipients = [
            (r.address, r.state, r.reply_code, r.reply_text, r.attempt_id)
            for r in row.recipient_statuses.order_by("pk")
        ]
        return fields, recipients

    assert stored(one.pk) == stored(general.pk)
    assert [r[0] for r in stored(one.pk)[1]] == ["b@example.com", "a@example.com", "c@example.com"]


def test_messages_named_by_id_are_claimed_a_bounded_number_at_a_time(
    smtp_server, settings, monkeypatch
):
    from django_reliable_mail.delivery import sending

    server = smtp_server()
    settings.RELIABLE_MAIL = queue_config(main=provider_for(server, MAX_CONNECTIONS=1))
    queue_async(settings)
    EmailBackend().send_messages([message(subject=f"m{i}") for i in range(5)])
    monkeypatch.setattr(sending, "IDS_PER_CLAIM", 2)
    ids = list(OutboundMessage.objects.order_by("pk").values_list("pk", flat=True))
    summary = delivery.deliver_messages(ids)
    assert summary.claimed == 5 and summary.sent == 5
    assert summary.connections == 3  # one batch (and connection) per 2 ids
    assert len(server.messages) == 5


def test_a_slow_batch_stores_each_result_without_waiting_for_a_full_chunk(
    smtp_server, settings, monkeypatch
):

    from django_reliable_mail import signals
    from django_reliable_mail.delivery import sending

    server = smtp_server(reply_delay=0.5)  # each final reply takes 0.5 s
    settings.RELIABLE_MAIL = queue_config(main=provider_for(server, MAX_CONNECTIONS=1))
    queue_async(settings)
    EmailBackend().send_messages([message(subject=f"m{i}") for i in range(3)])
    monkeypatch.setattr(sending, "RECORD_WITHIN_SECONDS", 0.05)
    stored_at = []

    def note(sender, attempt, **kwargs):
        stored_at.append(time.monotonic())

    signals.attempt_finished.connect(note)
    try:
        assert delivery.deliver_due().sent == 3
    finally:
        signals.attempt_finished.disconnect(note)
    # The first result was stored while the others were still being sent, not at the end.
    assert len(stored_at) == 3 and stored_at[-1] - stored_at[0] > 0.3, stored_at


def test_a_fast_batch_is_stored_in_full_chunks(smtp_server, settings, monkeypatch):
    """Results that arrive while a chunk is being stored wait for the next full chunk
    instead of going into a transaction of their own, a few at a time (the database side
    shares this process with the SMTP side, so its time is not free)."""
    server = smtp_server(extensions=["PIPELINING"])
    settings.RELIABLE_MAIL = {
        **queue_config(main=provider_for(server, MAX_CONNECTIONS=2)),
        "SMTP_PROCESS": "never",
    }
    queue_async(settings)
    EmailBackend().send_messages([message(subject=f"m{i}") for i in range(130)])
    sizes = slow_recording(monkeypatch, chunk=40)
    assert delivery.deliver_due(limit=200).sent == 130
    assert sizes == [40, 40, 40, 10]


def test_sqlite_file_without_immediate_transactions_is_warned_about(settings, monkeypatch):
    from django.db import connection

    from django_reliable_mail.checks import check_sqlite_locking

    settings.RELIABLE_MAIL = queue_config(main={"HOST": "h", "PORT": 587})
    if connection.vendor != "sqlite":
        assert check_sqlite_locking() == []
        return
    assert check_sqlite_locking() == []  # in memory: no other process can share it
    monkeypatch.setitem(connection.settings_dict, "NAME", "/srv/app/db.sqlite3")
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", {})
    (warning,) = check_sqlite_locking()
    assert warning.id == "reliable_mail.W015"
    assert "DATABASES['default']" in warning.msg and "transaction_mode" in warning.hint
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", {"transaction_mode": "IMMEDIATE"})
    assert check_sqlite_locking() == []
    settings.RELIABLE_MAIL = {**settings.RELIABLE_MAIL, "MODE": "immediate"}
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", {})
    assert check_sqlite_locking() == []  # nothing else writes to it in the background


def test_attempt_finished_gets_the_stored_attempt_with_its_message(
    smtp_server, settings, django_assert_num_queries
):
    from django_reliable_mail import signals

    server = smtp_server()
    settings.RELIABLE_MAIL = queue_config(main=provider_for(server))
    queue_async(settings)
    EmailBackend().send_messages([message(subject="receipt")])
    seen = []

    def note(sender, attempt, message, **kwargs):
        with django_assert_num_queries(0):  # the message comes cached, as the ORM would
            same = attempt.message is message
        seen.append((attempt, same))

    signals.attempt_finished.connect(note)
    try:
        assert delivery.deliver_due().sent == 1
    finally:
        signals.attempt_finished.disconnect(note)
    ((attempt, same),) = seen
    stored = DeliveryAttempt.objects.get()
    assert same and attempt.pk == stored.pk and not attempt._state.adding
    fields = [f.attname for f in DeliveryAttempt._meta.concrete_fields]
    assert [getattr(attempt, f) for f in fields] == [getattr(stored, f) for f in fields]


def test_batches_without_receivers_still_link_recipients_and_log(smtp_server, settings, caplog):
    """With no signal receiver connected the worker builds no attempt instances: each
    recipient still points at its own attempt, and every attempt is logged."""
    server = smtp_server()
    settings.RELIABLE_MAIL = queue_config(main=provider_for(server))
    queue_async(settings)
    EmailBackend().send_messages([message(subject=f"m{i}") for i in range(3)])
    with caplog.at_level(logging.INFO, logger="django_reliable_mail.delivery.recording"):
        assert delivery.deliver_due().sent == 3
    for row in OutboundMessage.objects.all():
        (attempt,) = row.attempts.all()
        assert [s.attempt_id for s in row.recipient_statuses.all()] == [attempt.pk]
        assert f"message {row.pk} attempt 1 via main: accepted (250 " in caplog.text
