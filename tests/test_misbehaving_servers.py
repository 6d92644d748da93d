"""One server that really misbehaves on the wire per case, and what must come of it.

Each case was a way to make the transport call something a success that was not, lose a
message, raise out of a session, or store a secret or text no database takes. The
hostile server (``tests/hostile.py``) logs what it really got; that log is the judge.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from django.test import override_settings

from django_reliable_mail.backends import EmailBackend
from django_reliable_mail.models import DeliveryAttempt
from django_reliable_mail.smtp import Envelope, Outcome, SMTPSession, deliver
from django_reliable_mail.smtp.pool import Job, send_batch
from django_reliable_mail.smtp.transport import BodyStartNotRecorded

from .helpers import PASSWORD
from .hostile import DISCONNECT, ECHO, SILENCE, HostileServer, send, serving_in_a_thread
from .test_backend import message, reliable_mail
from .test_backend import send as send_through
from .test_hostile_transport import (
    FORBIDDEN,
    USERNAME,
    assert_storable_and_clean,
    body_of,
    server_settings,
)


def envelope(*recipients: str, key: int = 1) -> Envelope:
    return Envelope("s@example.com", list(recipients or ["a@example.com"]), body_of(key))


async def one(server: HostileServer, *recipients: str, **settings):
    settings.setdefault("tls", "none")
    settings.setdefault("ca_file", None)
    result = await deliver(server_settings(server, **settings), envelope(*recipients))
    assert_storable_and_clean(result)
    return result


async def one_with_credentials(tls, script, **settings):
    """One message over STARTTLS to a server that wants AUTH; (the server, the result)."""
    server = HostileServer(script=script, tls_context=tls[0], users={USERNAME: PASSWORD})
    async with server:
        result = await one(
            server, tls="starttls", ca_file=tls[1], username=USERNAME, password=PASSWORD, **settings
        )
    return server, result


def no_body_went_out(server: HostileServer) -> bool:
    return all(body.job is None for body in server.log.bodies) and not server.log.unrecognized


@pytest.mark.parametrize("pipelining", [True, False])
async def test_data_answered_250_sends_no_body_and_is_no_success(pipelining):
    script = {("data", 0): send(b"250 2.0.0 Ok\r\n")}
    async with HostileServer(script=script, pipelining=pipelining) as server:
        result = await one(server)
    assert result.outcome == Outcome.TRANSIENT_FAILURE
    assert result.recipients["a@example.com"].state == "deferred"
    assert (result.reply_code, result.reply_text) == (250, "2.0.0 Ok")
    assert not result.body_sent and no_body_went_out(server)
    assert "QUIT" not in server.log.commands  # the server's state is unknown: just close


@pytest.mark.parametrize("pipelining", [True, False])
async def test_mail_answered_252_sends_no_body(pipelining):
    # A lenient server goes on with the transaction and would take a body.
    script = {("mail", 0): send(b"252 2.1.0 Sender maybe\r\n")}
    async with HostileServer(script=script, pipelining=pipelining, lenient=True) as server:
        result = await one(server)
    assert result.outcome == Outcome.TRANSIENT_FAILURE
    assert result.recipients["a@example.com"].stage == "mail"
    assert no_body_went_out(server)


@pytest.mark.parametrize("pipelining", [True, False])
async def test_rcpt_answered_252_is_no_acceptance(pipelining):
    script = {("rcpt", 1): send(b"252 2.1.5 Cannot VRFY user, but will accept\r\n")}
    async with HostileServer(script=script, pipelining=pipelining, lenient=True) as server:
        result = await one(server, "a@example.com", "b@example.com")
    # The server's view of the envelope is unknown: nothing goes, both wait.
    assert result.outcome == Outcome.TRANSIENT_FAILURE
    assert {r.state for r in result.recipients.values()} == {"deferred"}
    assert result.recipients["b@example.com"].code == 252
    assert no_body_went_out(server)


async def test_a_pipelined_354_with_no_recipient_accepted_gets_no_dot():
    # Before: a "." after the 354 completed an empty message on the server.
    script = {("rcpt", 0): send(b"550 5.1.1 No such user\r\n")}
    async with HostileServer(script=script, lenient=True) as server:
        result = await one(server)
    assert result.outcome == Outcome.PERMANENT_FAILURE
    [body] = server.log.bodies  # the server did enter DATA...
    assert not body.complete and body.job is None  # ...and got nothing, not even "."
    assert "closing the connection without QUIT" in result.transcript


@pytest.mark.parametrize("reply", [b"354 Go on\r\n", b"220 ok\r\n", b"251 2.0.0 queued\r\n"])
async def test_final_dot_answered_positively_but_not_250_is_no_success_and_unknown(reply):
    """The server took the whole body and said something positive: it may have the
    message, so the outcome is ``unknown`` (a retry is a possible duplicate)."""
    script = {("end_of_data", 0): send(reply)}
    async with HostileServer(script=script) as server:
        result = await one(server)
    assert result.outcome == Outcome.UNKNOWN and result.body_sent
    assert result.reply_code == int(reply[:3]) and result.queue_id == ""
    recipient = result.recipients["a@example.com"]
    assert (recipient.state, recipient.stage) == ("unknown", "end_of_data")
    assert "QUIT" not in server.log.commands  # it may read a QUIT as message text


async def test_final_dot_refused_is_a_plain_failure():
    script = {("end_of_data", 0): send(b"451 4.3.0 try again later\r\n")}
    async with HostileServer(script=script) as server:
        result = await one(server)
    assert result.outcome == Outcome.TRANSIENT_FAILURE
    assert result.recipients["a@example.com"].state == "deferred"


@pytest.mark.parametrize(
    "greeting",
    [b"SSH-2.0-OpenSSH_9.2p1\r\n", b"HTTP/1.1 400 Bad Request\r\n", b"554-x\r\n220 y\r\n"],
)
async def test_a_non_smtp_greeting_is_a_provider_failure_recorded_as_received(greeting):
    async with HostileServer(script={("greeting", 0): send(greeting)}) as server:
        result = await one(server)
    assert result.outcome == Outcome.TRANSIENT_FAILURE and result.provider_level
    assert result.reply_code is None
    assert result.reply_text == greeting.decode().rstrip("\r\n").replace("\r\n", "\n")
    assert "malformed reply to the greeting" in result.error


async def test_a_garbage_greeting_stops_the_batch_instead_of_looping():
    jobs = [Job(key, envelope(key=key)) for key in range(20)]
    script = {("greeting", n): send(b"garbage\r\n") for n in range(20)}
    async with HostileServer(script=script) as server:
        outcome = await send_batch(server_settings(server, tls="none", ca_file=None), jobs)
    assert server.log.connections == 1
    assert len(outcome.results) == 1 and len(outcome.untouched) == 19


@pytest.mark.parametrize("stage", ["ehlo", "mail", "rcpt", "end_of_data"])
async def test_a_reply_line_over_8_kb(stage):
    script = {(stage, 0): send(b"250 " + b"x" * 9000 + b"\r\n")}
    async with HostileServer(script=script) as server:
        result = await one(server)
    assert result.outcome == (
        Outcome.UNKNOWN if stage == "end_of_data" else (Outcome.TRANSIENT_FAILURE)
    )
    assert "too long" in result.error
    assert len(result.reply_text) < 4100  # capped, saying how much was cut
    assert "QUIT" not in server.log.commands  # framing lost: the connection is dropped


async def test_a_connection_lost_between_354_and_the_body():
    script = {("data", 0): send(b"354 Go ahead\r\n", hang_up=True)}
    async with HostileServer(script=script) as server:
        session = SMTPSession(server_settings(server, tls="none", ca_file=None))
        await session.open()
        assert session.smtp is not None
        gone = session.smtp.connection_gone

        async def body_about_to_start() -> None:
            await gone.wait()  # the server is gone before the body can go

        result = await session.send(envelope(), before_body=body_about_to_start)
        await session.close()
    assert_storable_and_clean(result)
    assert result.outcome == Outcome.TRANSIENT_FAILURE and not result.body_sent
    assert result.recipients["a@example.com"].state == "deferred"
    assert "connection failed" in result.error


@pytest.mark.parametrize(
    ("stage", "reply"),
    [("rcpt", b"250-2.1.5 fine\r\n550 5.1.1 not really\r\n"), ("mail", b"550-no\r\n250 yes\r\n")],
)
async def test_a_multi_line_reply_with_mixed_codes(stage, reply):
    async with HostileServer(script={(stage, 0): send(reply)}) as server:
        result = await one(server)
    assert result.outcome == Outcome.TRANSIENT_FAILURE
    assert "different codes" in result.error
    assert result.reply_text == reply.decode().rstrip("\r\n").replace("\r\n", "\n")
    assert result.reply_code is None and no_body_went_out(server)


@pytest.mark.parametrize(
    "line",
    [b"-12 minus", b" 12 space", b"099 low", b"199 low", b"600 high", b"1000 long", b"2x0 hex"],
)
async def test_codes_outside_200_to_599(line):
    async with HostileServer(script={("mail", 0): send(line + b"\r\n")}) as server:
        result = await one(server)
    assert result.outcome == Outcome.TRANSIENT_FAILURE
    assert result.reply_code is None and result.reply_text == line.decode()
    assert result.recipients["a@example.com"].stage == "mail"


@pytest.mark.parametrize(
    "reply",
    [
        b"535 5.7.8 Authentication failed for " + ECHO + b"\r\n",
        b"535-5.7.8 you sent\r\n535 5.7.8 " + ECHO + b" and " + PASSWORD.encode() + b"\r\n",
    ],
)
async def test_a_535_echoing_the_auth_plain_payload_and_the_password(tls, reply):
    script = {("auth", 0): send(reply)}
    server, result = await one_with_credentials(tls, script, auth_mechanisms=("PLAIN",))
    assert server.log.auth_payloads  # it did get (and echo) the payload
    assert result.outcome == Outcome.CONFIG_ERROR and result.reply_code == 535
    texts = [result.reply_text, result.error, result.transcript]
    texts += [r.text for r in result.recipients.values()]
    for text in texts:
        for secret in FORBIDDEN:
            assert secret not in text
    assert "[redacted]" in result.reply_text and "[redacted]" in result.error


async def test_an_auth_payload_echoed_in_a_later_message_s_reply(tls):
    # Each message of a connection has its own transcript; the secrets are the connection's.
    server = HostileServer(tls_context=tls[0], users={USERNAME: PASSWORD}, echo=True)
    jobs = [Job(key, envelope(key=key)) for key in range(3)]
    async with server:
        settings = server_settings(
            server, tls="starttls", ca_file=tls[1], username=USERNAME, password=PASSWORD
        )
        outcome = await send_batch(settings, jobs)
    assert [r.outcome for _, r in outcome.results] == [Outcome.ACCEPTED] * 3
    assert server.log.connections == 1
    for _, result in outcome.results:
        assert_storable_and_clean(result)
        assert "[redacted]" in result.recipients["a@example.com"].text


async def test_latin1_and_nul_in_a_rcpt_reply_and_in_the_final_reply():
    script = {
        ("rcpt", 0): send(b"550 5.1.1 Empf\xe4nger unbekannt\x00\r\n"),
        ("end_of_data", 0): send(b"250 2.0.0 Ok: queued as 4BF1F3E2A (\xe4\x00)\r\n"),
    }
    async with HostileServer(script=script) as server:
        result = await one(server, "gone@example.com", "b@example.com")
    assert result.outcome == Outcome.PARTIAL
    gone = result.recipients["gone@example.com"]
    assert (gone.state, gone.enhanced_code) == ("rejected", "5.1.1")
    assert gone.text == "5.1.1 Empf\\xe4nger unbekannt"
    assert result.reply_text == "2.0.0 Ok: queued as 4BF1F3E2A (\\xe4)"
    assert result.queue_id == "4BF1F3E2A" and result.reply_enhanced_code == "2.0.0"


async def test_a_failed_body_start_mark_propagates_and_no_body_goes_out():
    async def mark_fails() -> None:
        raise ConnectionError("the database went away")

    async with HostileServer() as server:
        session = SMTPSession(server_settings(server, tls="none", ca_file=None))
        await session.open()
        with pytest.raises(BodyStartNotRecorded) as raised:
            await session.send(envelope(), before_body=mark_fails)
        await session.close()
    assert isinstance(raised.value.__cause__, ConnectionError)
    assert not session.is_open and no_body_went_out(server)
    [body] = server.log.bodies
    assert not body.complete


async def test_a_failed_mark_stops_the_batch_and_every_other_job_keeps_its_result():
    results = []

    async def fine() -> None:
        pass

    async def broken() -> None:
        raise ConnectionError("the database went away")

    jobs = [Job(key, envelope(key=key), broken if key == 2 else fine) for key in range(5)]
    async with HostileServer() as server:
        settings = server_settings(server, tls="none", ca_file=None)
        with pytest.raises(BodyStartNotRecorded):
            await send_batch(
                settings, jobs, max_connections=2, on_result=lambda j, r: results.append((j, r))
            )
    keys = [job.key for job, _ in results]
    assert 2 not in keys and len(keys) == len(set(keys))
    assert all(r.outcome == Outcome.ACCEPTED for _, r in results)
    assert all(body.job != "2" for body in server.log.bodies)


@pytest.mark.parametrize("misbehaviour", [DISCONNECT, SILENCE])
async def test_a_server_gone_at_rset_fails_only_that_message(misbehaviour):
    # The first message is refused, so the second starts with RSET, which gets no answer.
    script = {("mail", 0): send(b"451 4.3.0 try later\r\n"), ("rset", 0): misbehaviour}
    jobs = [Job(key, envelope(key=key)) for key in range(3)]
    async with HostileServer(script=script, pipelining=False) as server:
        outcome = await send_batch(server_settings(server, tls="none", ca_file=None), jobs)
    outcomes = {job.key: r.outcome for job, r in outcome.results}
    assert outcomes == {
        0: Outcome.TRANSIENT_FAILURE,
        1: Outcome.TRANSIENT_FAILURE,
        2: Outcome.ACCEPTED,
    }
    assert server.log.connections == 2


async def test_cancelling_a_delivery_is_not_swallowed():
    # Cancellation is not the server's doing: it propagates. (The server stays silent from
    # MAIL on: Python 3.11's wait_for loses a cancellation that coincides with a reply.)
    async with HostileServer(script={("mail", 0): SILENCE}) as server:
        settings = replace(server_settings(server, tls="none", ca_file=None), timeout=30)
        task = asyncio.ensure_future(deliver(settings, envelope()))
        await server.wait_for_command("MAIL")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.django_db
def test_latin1_and_nul_replies_are_stored(django_capture_on_commit_callbacks):
    script = {
        ("rcpt", 0): send(b"550 5.1.1 Empf\xe4nger unbekannt\x00\r\n"),
        ("end_of_data", 0): send(b"250 2.0.0 Ok: queued as 4BF1F3E2A (\xe4\x00)\r\n"),
    }
    with serving_in_a_thread(HostileServer(script=script)) as server:
        provider = {"HOST": server.host, "PORT": server.port, "TLS": "none", "TIMEOUT": 5}
        mail = message(to=["gone@example.com", "b@example.com"])
        with override_settings(RELIABLE_MAIL=reliable_mail(main=provider)):
            send_through(EmailBackend(), mail, callbacks=django_capture_on_commit_callbacks)
    attempt = DeliveryAttempt.objects.get()
    assert attempt.outcome == DeliveryAttempt.Outcome.PARTIAL
    assert attempt.reply_text == "2.0.0 Ok: queued as 4BF1F3E2A (\\xe4)"
    assert attempt.recipient_replies["gone@example.com"]["text"] == (
        "5.1.1 Empf\\xe4nger unbekannt"
    )
    assert "\\xe4" in attempt.transcript and attempt.queue_id == "4BF1F3E2A"


async def test_a_positive_greeting_other_than_220():
    async with HostileServer(script={("greeting", 0): send(b"250 welcome\r\n")}) as server:
        result = await one(server)
    assert result.outcome == Outcome.TRANSIENT_FAILURE and result.provider_level
    assert result.reply_code == 250 and "greeting was not 220" in result.error
    assert server.log.commands == []  # not even QUIT: what the server expects is unknown


async def test_ehlo_answered_other_than_250_falls_back_to_helo():
    script = {("ehlo", 0): send(b"220 hello again\r\n")}
    async with HostileServer(script=script) as server:
        result = await one(server)
    assert [c.split()[0] for c in server.log.commands[:2]] == ["EHLO", "HELO"]
    assert result.outcome == Outcome.ACCEPTED
    assert result.extensions_advertised == []  # HELO: no extensions


async def test_helo_answered_other_than_250_is_a_provider_failure():
    script = {("ehlo", 0): send(b"502 5.5.1 no EHLO\r\n"), ("ehlo", 1): send(b"220 hm\r\n")}
    async with HostileServer(script=script) as server:
        result = await one(server)
    assert result.outcome == Outcome.TRANSIENT_FAILURE and result.provider_level
    assert result.reply_code == 220 and no_body_went_out(server)


async def test_starttls_answered_250_sends_nothing_in_clear(tls):
    script = {("starttls", 0): send(b"250 sure\r\n")}
    server, result = await one_with_credentials(tls, script)
    assert result.outcome == Outcome.TRANSIENT_FAILURE and result.provider_level
    assert result.reply_code == 250 and server.log.auth_payloads == []
    assert not any(c.startswith(("AUTH", "MAIL")) for c in server.log.commands)


async def test_a_334_that_ends_auth_plain_is_a_failure_and_the_connection_dropped(tls):
    # The server waits for more: a QUIT now would be read as an AUTH answer.
    script = {("auth", 0): send(b"334 \r\n")}
    server, result = await one_with_credentials(tls, script, auth_mechanisms=("PLAIN",))
    assert result.outcome == Outcome.TRANSIENT_FAILURE and result.provider_level
    assert result.reply_code == 334 and "QUIT" not in server.log.commands


async def test_a_250_to_the_final_dot_then_a_hang_up_is_accepted():
    # Found by the fuzzer (as a flaw of the test server's log, since fixed): the server
    # answered 250 and hung up at once; the message is the server's, and says so.
    script = {("end_of_data", 0): send(b"250 ok\r\n", hang_up=True)}
    async with HostileServer(script=script) as server:
        result = await one(server)
    assert result.outcome == Outcome.ACCEPTED
    assert server.log.jobs_delivered() == {"1": ["a@example.com"]}
