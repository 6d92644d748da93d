"""A database that refuses an attempt row: a trigger (PostgreSQL) or RAISE(ABORT) (SQLite)
stands for whatever makes a database refuse one (a byte it cannot store, a constraint).
Nothing stays in ``sending``, nothing is sent twice unflagged, no message goes past
MAX_ATTEMPTS, and the other messages of the chunk are stored as usual."""

import logging
import re
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from django_reliable_mail import delivery, signals, tasks
from django_reliable_mail.backends import EmailBackend
from django_reliable_mail.conf import get_config
from django_reliable_mail.delivery.recording import record
from django_reliable_mail.models import DeliveryAttempt, OutboundMessage, ProviderState
from django_reliable_mail.smtp.transport import AttemptResult, RecipientResult

from .test_backend import message, provider_for
from .test_queue import queue_async, queue_config

pytestmark = pytest.mark.django_db(transaction=True)
Status = OutboundMessage.Status
MARK = "REFUSE-ME"
ATTEMPTS = "django_reliable_mail_deliveryattempt"
MESSAGES = "django_reliable_mail_outboundmessage"
SUBJECT = re.compile(rb"^Subject: (.*)$", re.MULTILINE)

#: Conditions (on the new attempt row, NEW) under which the database refuses it.
REFUSE_MARKED_REPLIES = f"NEW.reply_text LIKE '%{MARK}%'"
REFUSE_DOOMED = (
    f"EXISTS (SELECT 1 FROM {MESSAGES} m WHERE m.id = NEW.message_id AND m.subject LIKE '%doomed%')"
)
REFUSE_DOOMED_BUT_UNKNOWN = f"{REFUSE_DOOMED} AND NEW.outcome <> 'unknown'"
#: All of them but lease recovery's (whose texts are all ours).
REFUSE_DOOMED_BUT_RECOVERY = f"{REFUSE_DOOMED} AND NEW.error NOT LIKE 'the worker stopped%'"


@pytest.fixture
def refuse():
    """``refuse(condition)``: the database refuses attempt rows matching it, until the end
    of the test."""
    created = []

    def install(condition):
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(
                    "CREATE FUNCTION refuse_attempt() RETURNS trigger AS $$ BEGIN "
                    f"IF {condition} THEN RAISE EXCEPTION 'attempt row refused'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
                cursor.execute(
                    f"CREATE TRIGGER refuse_attempt BEFORE INSERT ON {ATTEMPTS} "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_attempt()"
                )
            else:
                cursor.execute(
                    f"CREATE TRIGGER refuse_attempt BEFORE INSERT ON {ATTEMPTS} "
                    f"WHEN {condition} BEGIN SELECT RAISE(ABORT, 'attempt row refused'); END"
                )
        created.append(condition)

    yield install
    if created:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"DROP TRIGGER refuse_attempt ON {ATTEMPTS}")
                cursor.execute("DROP FUNCTION refuse_attempt()")
            else:
                cursor.execute("DROP TRIGGER refuse_attempt")


def marked_reply(data):
    """The end-of-DATA reply: the marker for messages whose subject says "marked"."""
    subject = SUBJECT.search(data).group(1)
    return f"250 2.0.0 queued {MARK}\r\n".encode() if b"marked" in subject else b"250 ok Q1\r\n"


def config_for(server, smtp_process="never", **retry):
    return {
        **queue_config(
            main=provider_for(
                server,
                MAX_CONNECTIONS=1,
                RETRY={"MAX_ATTEMPTS": 2, "BASE_SECONDS": 60, "JITTER": 0, **retry},
            )
        ),
        "SMTP_PROCESS": smtp_process,
    }


def refused_chunk(line, *, reduced, recovered):
    """Whether ``line`` logs a refused chunk with these messages reduced and recovered,
    and the rest of it stored in full."""
    found = re.fullmatch(
        r"storing a chunk of (\d+) attempt\(s\) failed; stored one by one: (\d+) in full, "
        r"reduced \(without transcript and replies\): (.*), left to lease recovery: (.*)",
        line,
    )
    assert found, line
    size, full = int(found[1]), int(found[2])
    return (
        full == size - len(reduced) - len(recovered)
        and found[3] == (str(reduced) if reduced else "none")
        and found[4] == (str(recovered) if recovered else "none")
    )


def copies(server):
    return Counter(SUBJECT.search(data).group(1).decode().strip() for data in server.log.messages)


def make_due():
    OutboundMessage.objects.exclude(status=Status.SENT).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )


def assert_nothing_in_sending():
    assert not OutboundMessage.objects.filter(status=Status.SENDING).exists()


def assert_every_copy_beyond_the_first_flagged(server):
    flagged = Counter(
        DeliveryAttempt.objects.filter(possible_duplicate=True).values_list(
            "message__subject", flat=True
        )
    )
    for subject, count in copies(server).items():
        assert count == 1 or flagged[subject] >= count - 1, (subject, count, flagged)


@pytest.mark.parametrize("smtp_process", ["never", "always"])
def test_a_refused_attempt_is_stored_reduced_and_the_chunk_as_usual(
    hostile_server, refuse, settings, caplog, smtp_process
):
    server = hostile_server(final_reply=marked_reply)
    settings.RELIABLE_MAIL = config_for(server, smtp_process)
    queue_async(settings)
    subjects = ["m0", "m1", "marked", "m3", "m4"]
    EmailBackend().send_messages([message(subject=s) for s in subjects])
    refuse(REFUSE_MARKED_REPLIES)

    announced = []

    def note(sender, message, attempt, **kwargs):
        announced.append(message.subject)

    signals.attempt_finished.connect(note)
    try:
        with caplog.at_level(logging.INFO, logger="django_reliable_mail.delivery.recording"):
            summary = delivery.deliver_due(limit=10)
    finally:
        signals.attempt_finished.disconnect(note)

    assert (summary.attempts, summary.sent) == (5, 5)
    assert_nothing_in_sending()
    assert copies(server) == dict.fromkeys(subjects, 1)
    rows = {m.subject: m for m in OutboundMessage.objects.all()}
    assert {m.status for m in rows.values()} == {Status.SENT}
    assert {m.attempt_count for m in rows.values()} == {1}
    for subject, row in rows.items():
        (attempt,) = row.attempts.all()
        assert attempt.outcome == "accepted" and not attempt.possible_duplicate
        assert (attempt.provider, attempt.host) == ("main", "127.0.0.1")
        if subject == "marked":
            # Reduced: what the server said is not kept, and the attempt says why.
            assert (attempt.reply_code, attempt.reply_text, attempt.transcript) == (250, "", "")
            assert attempt.recipient_replies == {} and attempt.reply_enhanced_code == ""
            assert re.match(
                r"the transcript and the server's replies could not be stored "
                r"\(\w+Error: attempt row refused",
                attempt.error,
            ), attempt.error
            assert "could not be stored" in row.recipient_statuses.get().reply_text
            assert row.recipient_statuses.get().state == "accepted"
        else:
            assert attempt.reply_text == "ok Q1" and "MAIL FROM" in attempt.transcript
    # Every attempt announced once (signal and log line), the reduced one too.
    assert sorted(announced) == sorted(subjects)
    for row in rows.values():
        assert caplog.text.count(f"message {row.pk} attempt 1 via main: accepted") == 1
    # One log line for the chunk, with the database's error, not one per message.
    refused = [r for r in caplog.records if "storing a chunk" in r.getMessage()]
    assert len(refused) == 1 and refused[0].exc_info is not None
    assert refused_chunk(refused[0].getMessage(), reduced=[rows["marked"].pk], recovered=[])


@pytest.mark.parametrize("smtp_process", ["never", "always"])
def test_an_attempt_refused_even_reduced_goes_to_lease_recovery_flagged(
    hostile_server, refuse, settings, caplog, smtp_process
):
    """The database refuses every attempt of one message but an ``unknown`` one: it leaves
    sending through lease recovery, flagged, and is given up at MAX_ATTEMPTS (2) instead of
    being sent again and again (the incident: delivered 3 times, still retrying)."""
    server = hostile_server()
    settings.RELIABLE_MAIL = config_for(server, smtp_process)
    queue_async(settings)
    EmailBackend().send_messages([message(subject=s) for s in ["m0", "doomed", "m2"]])
    refuse(REFUSE_DOOMED_BUT_UNKNOWN)

    for round_ in range(4):  # more rounds than MAX_ATTEMPTS allows
        caplog.clear()
        delivery.deliver_due(limit=10)
        doomed = OutboundMessage.objects.get(subject="doomed")
        if round_ < 2:
            (line,) = [r.getMessage() for r in caplog.records if "storing a" in r.getMessage()]
            assert refused_chunk(line, reduced=[], recovered=[doomed.pk])
        assert_nothing_in_sending()
        assert tasks.dispatch().startswith("recovered 0 expired lease(s)")
        doomed = OutboundMessage.objects.get(subject="doomed")
        assert doomed.attempt_count <= 2
        if doomed.status == Status.RETRYING:
            assert doomed.next_attempt_at > timezone.now()  # not due at once
        make_due()

    assert doomed.status == Status.FAILED and "MAX_ATTEMPTS is 2" in doomed.last_error
    assert list(doomed.attempts.values_list("outcome", "possible_duplicate")) == [
        ("unknown", True),
        ("unknown", True),
    ]
    assert copies(server) == {"m0": 1, "doomed": 2, "m2": 1}
    assert_every_copy_beyond_the_first_flagged(server)
    others = OutboundMessage.objects.exclude(subject="doomed")
    assert {(m.status, m.attempts.count()) for m in others} == {(Status.SENT, 1)}


def test_a_message_no_attempt_row_can_be_stored_for_is_held_not_resent(
    hostile_server, refuse, settings, caplog
):
    server = hostile_server()
    settings.RELIABLE_MAIL = config_for(server)
    queue_async(settings)
    EmailBackend().send_messages([message(subject=s) for s in ["m0", "doomed"]])
    refuse(REFUSE_DOOMED)

    delivery.deliver_due(limit=10)
    assert_nothing_in_sending()
    doomed = OutboundMessage.objects.get(subject="doomed")
    assert doomed.status == Status.HELD and doomed.attempts.count() == 0
    assert "the database refused" in doomed.last_error
    make_due()
    tasks.dispatch()
    delivery.deliver_due(limit=10)
    assert copies(server) == {"m0": 1, "doomed": 1}


def test_immediate_mode_never_raises_to_the_caller(hostile_server, refuse, settings, caplog):
    from django.core.mail import send_mail

    server = hostile_server()
    settings.RELIABLE_MAIL = {**config_for(server), "MODE": "immediate"}
    settings.EMAIL_BACKEND = "django_reliable_mail.backends.EmailBackend"
    refuse(REFUSE_DOOMED)
    assert send_mail("doomed", "body", "app@example.com", ["u@example.com"]) == 1
    assert_nothing_in_sending()
    assert OutboundMessage.objects.get().status == Status.HELD


def test_immediate_mode_logs_a_failing_first_attempt(settings, caplog, monkeypatch):
    from django.core.mail import send_mail
    from django.db import OperationalError

    settings.RELIABLE_MAIL = {**queue_config(main={"HOST": "127.0.0.1", "PORT": 2, "TLS": "none"}),
                              "MODE": "immediate"}  # fmt: skip
    settings.EMAIL_BACKEND = "django_reliable_mail.backends.EmailBackend"

    def gone(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(delivery.sending, "claim", gone)
    assert send_mail("hi", "body", "app@example.com", ["u@example.com"]) == 1
    assert "server closed the connection unexpectedly" in caplog.text
    assert OutboundMessage.objects.get().status == Status.QUEUED  # the dispatcher's now


def test_a_reply_the_database_cannot_store_as_text(hostile_server, settings):
    """Real bytes on the wire: a Latin-1 byte and a NUL in the final reply (PostgreSQL
    refuses NUL in text; neither database takes the lone surrogate it decodes to)."""
    server = hostile_server(
        final_reply=lambda data: (
            b"250 2.0.0 Empf\xe4nger ok\x00 queued\r\n" if b"marked" in data else b"250 ok\r\n"
        )
    )
    settings.RELIABLE_MAIL = config_for(server)
    queue_async(settings)
    EmailBackend().send_messages([message(subject=s) for s in ["m0", "marked", "m2"]])
    assert delivery.deliver_due(limit=10).sent == 3
    assert_nothing_in_sending()
    assert copies(server) == {"m0": 1, "marked": 1, "m2": 1}
    assert not ProviderState.objects.filter(degraded_until__isnull=False).exists()
    for row in OutboundMessage.objects.all():
        (attempt,) = row.attempts.all()
        assert attempt.outcome == "accepted" and attempt.reply_code == 250


# -- the fallback, one call at a time -------------------------------------------------------


def claimed_pair(settings, **provider):
    settings.RELIABLE_MAIL = queue_config(
        main={"HOST": "127.0.0.1", "PORT": 2, "TLS": "none", **provider}
    )
    queue_async(settings)
    EmailBackend().send_messages(
        [message(subject="doomed", to=["a@example.com", "b@example.com"]), message(subject="x")]
    )
    config = get_config()
    claimed = {m.subject: m for m in delivery.claim(config=config)}
    return config, claimed["doomed"], claimed["x"]


def result_for(addresses, *, outcome, body_sent, state):
    return AttemptResult(
        outcome=outcome,
        host="127.0.0.1",
        recipients={a: RecipientResult(a, state, 250, "2.0.0 ok", "data") for a in addresses},
        reply_code=250,
        reply_text="2.0.0 ok",
        body_sent=body_sent,
        transcript="250 2.0.0 ok",
    )


def test_a_chunk_refused_once_is_stored_in_full_counted_once(settings, monkeypatch, caplog):
    """The database refuses the chunk after the messages were moved on in memory: they are
    put back as they were, so the retry counts the attempt once and leaves alone what the
    attempt did not touch (a recipient accepted earlier)."""
    from django.db import DataError

    from django_reliable_mail.delivery import recording

    config, doomed, _ = claimed_pair(settings)
    first = doomed.recipient_rows[0]
    first.state, first.reply_text = "accepted", "accepted earlier"
    first.save()
    doomed.attempt_count = 1
    update = recording.rows.update
    calls = []

    def refuse_once(model, objects, names):
        calls.append(model)
        if model is OutboundMessage and calls.count(OutboundMessage) == 1:
            raise DataError("refused once")
        return update(model, objects, names)

    monkeypatch.setattr(recording.rows, "update", refuse_once)
    result = result_for(["b@example.com"], outcome="accepted", body_sent=True, state="accepted")
    attempt = record(doomed, result, provider=config.provider("main"), config=config)

    row = OutboundMessage.objects.get(pk=doomed.pk)
    assert attempt == row.attempts.get() and attempt.transcript == "250 2.0.0 ok"
    assert (row.status, row.attempt_count) == (Status.SENT, 2)
    states = {s.address: (s.state, s.reply_text) for s in row.recipient_statuses.all()}
    assert states == {
        "a@example.com": ("accepted", "accepted earlier"),
        "b@example.com": ("accepted", "2.0.0 ok"),
    }
    assert "stored one by one: 1 in full" in caplog.text
    # In memory too (signal receivers get these objects): as stored.
    assert [(s.state, s.reply_text) for s in doomed.recipient_rows] == list(states.values())


@pytest.mark.parametrize(
    ("outcome", "body_sent", "flagged"),
    [
        ("accepted", True, True),
        ("unknown", False, True),  # lost while the body was being written
        ("transient_failure", False, False),  # refused before DATA: never went out
    ],
)
def test_the_last_resort_flags_what_may_have_gone_out_and_only_that_message(
    settings, refuse, outcome, body_sent, flagged
):
    config, doomed, other = claimed_pair(settings, RETRY={"BASE_SECONDS": 60, "JITTER": 0})
    refuse(REFUSE_DOOMED_BUT_RECOVERY)
    state = {"accepted": "accepted", "unknown": "unknown"}.get(outcome, "deferred")
    result = result_for(doomed.recipients, outcome=outcome, body_sent=body_sent, state=state)
    attempt = record(doomed, result, provider=config.provider("main"), config=config)

    assert attempt is None
    row = OutboundMessage.objects.get(pk=doomed.pk)
    if flagged:
        assert list(row.attempts.values_list("outcome", "possible_duplicate")) == [
            ("unknown", True)
        ]
        assert (row.status, row.attempt_count) == (Status.RETRYING, 1)
        assert row.next_attempt_at > timezone.now() + timedelta(seconds=50)
    else:
        assert not row.attempts.exists()
        assert (row.status, row.attempt_count) == (Status.QUEUED, 0)
        assert row.next_attempt_at <= timezone.now()
    # The rest of the claim is not touched.
    other = OutboundMessage.objects.get(pk=other.pk)
    assert other.status == Status.SENDING and other.lease_expires_at > timezone.now()
    assert other.body_started_at is None and not other.attempts.exists()
