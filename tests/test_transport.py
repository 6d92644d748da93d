"""The SMTP dialogue against real loopback servers (no Django database involved)."""

import base64

import pytest

from django_reliable_mail.smtp import Outcome, ReplyRule, Verdict, deliver

from .helpers import BODY, PASSWORD, envelope, settings_for

pytestmark = pytest.mark.asyncio


async def test_implicit_tls_delivers_and_records_tls(smtp_server, tls):
    server = smtp_server(tls="implicit", users={"u@example.com": PASSWORD})
    result = await deliver(
        settings_for(server, tls[1], username="u@example.com", password=PASSWORD), envelope()
    )
    assert result.outcome == Outcome.ACCEPTED, result.error
    assert result.tls_version.startswith("TLSv1.")
    assert result.tls_cipher
    assert result.queue_id
    [received] = server.messages
    assert received.tls and received.login == "u@example.com"
    assert received.rcpt_tos == ["b@example.com"]
    assert received.data.replace(b"\r\n", b"\n") == BODY.replace(b"\r\n", b"\n")
    assert "TLS established" in result.transcript
    assert "STARTTLS" not in server.log.raw()


async def test_starttls_upgrades_then_ehlo_again(smtp_server, tls):
    server = smtp_server(tls="starttls", users={"u": PASSWORD})
    result = await deliver(
        settings_for(server, tls[1], username="u", password=PASSWORD), envelope()
    )
    assert result.outcome == Outcome.ACCEPTED, result.error
    commands = [c.split()[0] for c in server.log.commands]
    assert commands[:4] == ["EHLO", "STARTTLS", "EHLO", "AUTH"]
    assert server.messages[0].tls
    # After TLS the server offers AUTH; before, it did not: the used set is the post-TLS one.
    assert any(line.startswith("AUTH") for line in result.extensions_advertised)


async def test_mandatory_starttls_fails_without_sending_credentials(smtp_server, tls):
    server = smtp_server(tls="none", users={"u": PASSWORD}, auth_require_tls=False)
    result = await deliver(
        settings_for(server, tls[1], tls="starttls", username="u", password=PASSWORD), envelope()
    )
    assert result.outcome == Outcome.CONFIG_ERROR
    assert result.provider_level
    assert "STARTTLS is not offered" in result.error
    assert [c.split()[0] for c in server.log.commands] == ["EHLO", "QUIT"]
    assert server.log.auth_attempts == [] and server.messages == []


async def test_opportunistic_never_sends_auth_in_clear(smtp_server, tls):
    server = smtp_server(tls="none", users={"u": PASSWORD}, auth_require_tls=False)
    result = await deliver(
        settings_for(server, tls="opportunistic", username="u", password=PASSWORD), envelope()
    )
    assert result.outcome == Outcome.CONFIG_ERROR
    assert "unencrypted" in result.error
    assert server.log.auth_attempts == []


async def test_opportunistic_upgrades_when_offered(smtp_server, tls):
    server = smtp_server(tls="starttls")
    result = await deliver(settings_for(server, tls[1], tls="opportunistic"), envelope())
    assert result.outcome == Outcome.ACCEPTED
    assert server.messages[0].tls


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
async def test_certificate_verification_failure(smtp_server, mode):
    server = smtp_server(tls=mode)
    result = await deliver(settings_for(server, None), envelope())  # our CA is not trusted
    assert result.outcome == Outcome.CONFIG_ERROR
    assert result.provider_level
    assert "could not be verified" in result.error
    assert server.messages == []


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
async def test_each_password_mechanism(smtp_server, tls, mechanism):
    server = smtp_server(tls="starttls", users={"u": PASSWORD})
    result = await deliver(
        settings_for(server, tls[1], username="u", password=PASSWORD, auth_mechanisms=(mechanism,)),
        envelope(),
    )
    assert result.outcome == Outcome.ACCEPTED, result.error
    assert result.auth_mechanism == mechanism
    assert server.log.auth_attempts[-1] == (mechanism, "u")
    assert_no_secret(result, PASSWORD, "u")


async def test_xoauth2_refreshes_a_stale_token_once(smtp_server, tls):
    server = smtp_server(tls="starttls", tokens={"u@example.com": "fresh-token-123"})
    calls = []

    async def token(*, username, force_refresh):
        calls.append(force_refresh)
        return "fresh-token-123" if force_refresh else "stale-token-456"

    result = await deliver(
        settings_for(
            server,
            tls[1],
            username="u@example.com",
            oauth2_token=token,
            auth_mechanisms=("XOAUTH2",),
        ),
        envelope(),
    )
    assert result.outcome == Outcome.ACCEPTED, result.error
    assert calls == [False, True]
    assert result.auth_mechanism == "XOAUTH2"
    for secret in ("fresh-token-123", "stale-token-456"):
        assert secret not in result.transcript and secret not in result.error


async def test_wrong_password_is_a_provider_level_config_error(smtp_server, tls):
    server = smtp_server(tls="starttls", users={"u": PASSWORD})
    result = await deliver(
        settings_for(server, tls[1], username="u", password="wrong-password-x"), envelope()
    )
    assert result.outcome == Outcome.CONFIG_ERROR
    assert result.provider_level
    assert result.reply_code == 535
    assert server.messages == []
    assert "wrong-password-x" not in result.transcript


# -- the Strato incident ----------------------------------------------------------------------


def strato_like(smtp_server):
    return smtp_server(tls="implicit", extensions=["REQUIRETLS"], discard_when_requiretls=True)


async def test_requiretls_is_never_used_just_because_advertised(smtp_server, tls):
    server = strato_like(smtp_server)
    result = await deliver(settings_for(server, tls[1]), envelope())
    assert result.outcome == Outcome.ACCEPTED
    assert "REQUIRETLS" not in " ".join(c for c in server.log.commands if c.startswith("MAIL"))
    assert len(server.messages) == 1 and server.log.discarded == []


async def test_the_lying_server_really_drops_requiretls_mail(smtp_server, tls):
    # What happened with MailKit 4.4.0: the server says 250 queued, then drops it.
    server = strato_like(smtp_server)
    result = await deliver(settings_for(server, tls[1]), envelope(require_tls=True))
    assert result.outcome == Outcome.ACCEPTED and result.queue_id
    assert server.messages == [] and len(server.log.discarded) == 1


async def test_disabled_requiretls_fails_loudly_for_a_message_that_requires_it(smtp_server, tls):
    server = strato_like(smtp_server)
    settings = settings_for(server, tls[1], disable_extensions=frozenset({"REQUIRETLS"}))
    result = await deliver(settings, envelope(require_tls=True))
    assert result.outcome == Outcome.PERMANENT_FAILURE
    assert "disables it" in result.error
    assert not any(c.startswith("MAIL") for c in server.log.commands)
    assert server.log.discarded == [] and server.messages == []
    # and ordinary mail through the same provider never carries it
    result = await deliver(settings, envelope())
    assert result.outcome == Outcome.ACCEPTED
    assert "REQUIRETLS" not in server.log.raw().split("EHLO")[-1].split("DATA")[0]
    assert "REQUIRETLS" not in " ".join(result.extensions_used)


async def test_requiretls_sent_when_requested_and_honoured(smtp_server, tls):
    server = smtp_server(tls="implicit", extensions=["REQUIRETLS"])
    result = await deliver(settings_for(server, tls[1]), envelope(require_tls=True))
    assert result.outcome == Outcome.ACCEPTED
    assert "REQUIRETLS" in server.messages[0].mail_options
    assert "REQUIRETLS" in result.mail_parameters


async def test_requiretls_requested_but_not_offered(smtp_server, tls):
    server = smtp_server(tls="implicit")
    result = await deliver(settings_for(server, tls[1]), envelope(require_tls=True))
    assert result.outcome == Outcome.PERMANENT_FAILURE
    assert "does not offer it" in result.error


# -- extensions ------------------------------------------------


async def test_disabled_8bitmime_is_not_used(smtp_server):
    server = smtp_server()
    body = "Subject: x\r\n\r\nGrüße\r\n".encode()
    result = await deliver(settings_for(server), envelope(data=body))
    assert "BODY=8BITMIME" in server.messages[0].mail_options
    result = await deliver(
        settings_for(server, disable_extensions=frozenset({"8BITMIME"})), envelope(data=body)
    )
    assert result.outcome == Outcome.ACCEPTED
    assert server.messages[1].mail_options == []
    assert "8-bit body sent without BODY=8BITMIME" in result.transcript


async def test_smtputf8_address_needs_the_extension(smtp_server):
    server = smtp_server()
    ok = await deliver(settings_for(server), envelope(recipients=["jörg@example.com"]))
    assert ok.outcome == Outcome.ACCEPTED
    assert "SMTPUTF8" in server.messages[0].mail_options
    refused = await deliver(
        settings_for(server, disable_extensions=frozenset({"SMTPUTF8"})),
        envelope(recipients=["jörg@example.com"]),
    )
    assert refused.outcome == Outcome.PERMANENT_FAILURE
    assert "SMTPUTF8" in refused.error
    assert len(server.messages) == 1


async def test_disabled_pipelining_is_advertised_but_not_in_effect(smtp_server):
    server = smtp_server(extensions=["PIPELINING"])
    result = await deliver(
        settings_for(server, disable_extensions=frozenset({"PIPELINING"})), envelope()
    )
    assert "PIPELINING" in result.extensions_advertised
    assert "PIPELINING" not in result.extensions_used
    assert "disabled for this provider: PIPELINING" in result.transcript


async def test_size_exceeded_is_refused_before_mail(smtp_server):
    server = smtp_server(size_limit=100)
    result = await deliver(settings_for(server), envelope(data=BODY + b"x" * 200 + b"\r\n"))
    assert result.outcome == Outcome.PERMANENT_FAILURE
    assert "accepts at most 100" in result.error
    assert not any(c.startswith("MAIL") for c in server.log.commands)


async def test_size_parameter_is_declared(smtp_server):
    server = smtp_server(size_limit=10_000)
    await deliver(settings_for(server), envelope())
    assert f"SIZE={len(BODY)}" in server.messages[0].mail_options


async def test_dsn_parameters_only_when_offered(smtp_server):
    plain = smtp_server()
    result = await deliver(settings_for(plain), envelope(dsn_notify=("FAILURE",), dsn_ret="HDRS"))
    assert result.outcome == Outcome.ACCEPTED
    assert plain.messages[0].rcpt_options == [] and "DSN requested" in result.transcript
    dsn = smtp_server(extensions=["DSN"])
    result = await deliver(
        settings_for(dsn),
        envelope(dsn_notify=("FAILURE", "DELAY"), dsn_ret="HDRS", dsn_envid="id+1"),
    )
    assert result.outcome == Outcome.ACCEPTED
    assert "RET=HDRS" in dsn.messages[0].mail_options
    assert "ENVID=id+2B1" in dsn.messages[0].mail_options
    assert dsn.messages[0].rcpt_options == ["NOTIFY=FAILURE,DELAY"]


async def test_rcptmax_splits_the_envelope(smtp_server):
    server = smtp_server(extensions=["LIMITS RCPTMAX=2 MAILMAX=10"])
    recipients = [f"r{i}@example.com" for i in range(5)]
    result = await deliver(settings_for(server), envelope(recipients=recipients))
    assert result.outcome == Outcome.ACCEPTED
    assert [m.rcpt_tos for m in server.messages] == [
        recipients[:2],
        recipients[2:4],
        recipients[4:],
    ]


# -- replies at each stage ------------------------------------------------


async def test_partial_rcpt_rejection_sends_data_to_the_accepted_only(smtp_server):
    def rcpt(address):
        return {
            "gone@example.com": "550 5.1.1 User unknown",
            "busy@example.com": "450 4.2.1 Mailbox busy",
        }.get(address)

    server = smtp_server(rcpt_reply=rcpt)
    result = await deliver(
        settings_for(server),
        envelope(recipients=["ok@example.com", "gone@example.com", "busy@example.com"]),
    )
    assert result.outcome == Outcome.PARTIAL
    states = {a: r.state for a, r in result.recipients.items()}
    assert states == {
        "ok@example.com": "accepted",
        "gone@example.com": "rejected",
        "busy@example.com": "deferred",
    }
    assert result.recipients["gone@example.com"].enhanced_code == "5.1.1"
    assert server.messages[0].rcpt_tos == ["ok@example.com"]


@pytest.mark.parametrize(
    ("stage", "reply", "outcome"),
    [
        ("mail_reply", "451 4.3.0 Try again later", Outcome.TRANSIENT_FAILURE),
        ("mail_reply", "553 5.7.1 Sender not allowed", Outcome.PERMANENT_FAILURE),
        ("data_start_reply", "452 4.3.1 Insufficient storage", Outcome.TRANSIENT_FAILURE),
        ("data_start_reply", "554 5.5.1 No valid recipients", Outcome.PERMANENT_FAILURE),
        ("data_reply", "451 4.7.1 Greylisted", Outcome.TRANSIENT_FAILURE),
        ("data_reply", "554 5.7.1 Message rejected as spam", Outcome.PERMANENT_FAILURE),
    ],
)
async def test_4xx_and_5xx_at_each_stage(smtp_server, stage, reply, outcome):
    server = smtp_server(**{stage: reply})
    result = await deliver(settings_for(server), envelope())
    assert result.outcome == outcome
    assert result.reply_code == int(reply[:3])
    assert result.reply_enhanced_code == reply.split()[1]
    assert server.messages == []


@pytest.mark.parametrize("reply", ["451 4.1.1 Try later", "550 5.1.1 No such user"])
async def test_4xx_and_5xx_on_rcpt(smtp_server, reply):
    server = smtp_server(rcpt_reply=lambda a: reply)
    result = await deliver(settings_for(server), envelope())
    expected = Outcome.TRANSIENT_FAILURE if reply[0] == "4" else Outcome.PERMANENT_FAILURE
    assert result.outcome == expected
    assert not any(c == "DATA" for c in server.log.commands)


async def test_disconnect_after_the_body_is_unknown(smtp_server):
    server = smtp_server(disconnect_after_body=True)
    result = await deliver(settings_for(server), envelope())
    assert result.outcome == Outcome.UNKNOWN
    assert result.body_sent
    assert len(server.messages) == 1  # the server did get it
    assert "server may have it" in result.transcript


async def test_silence_after_the_body_is_unknown(smtp_server):
    server = smtp_server(stall_after_body=3)
    result = await deliver(settings_for(server, timeout=0.5), envelope())
    assert result.outcome == Outcome.UNKNOWN
    assert "timed out waiting for the final reply" in result.transcript


async def test_connection_refused_is_transient_and_provider_level():
    from django_reliable_mail.smtp import ServerSettings
    from django_reliable_mail.testing import free_port

    result = await deliver(
        ServerSettings(host="127.0.0.1", port=free_port(), tls="none", timeout=2), envelope()
    )
    assert result.outcome == Outcome.TRANSIENT_FAILURE
    assert result.provider_level
    assert "could not connect" in result.error


async def test_reply_rules_reclassify(smtp_server):
    server = smtp_server(data_reply="550 5.4.5 Daily user sending quota exceeded")
    rule = ReplyRule(
        verdict=Verdict.PROVIDER, code="550", enhanced="5.4.5", retry_after_seconds=900
    )
    result = await deliver(settings_for(server, reply_rules=(rule,)), envelope())
    assert result.outcome == Outcome.TRANSIENT_FAILURE
    assert result.provider_level and result.retry_after_seconds == 900


def assert_no_secret(result, password, username):
    plain = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    texts = [
        result.transcript,
        result.error,
        result.reply_text,
        *(r.text for r in result.recipients.values()),
    ]
    for text in texts:
        assert password not in text
        assert plain not in text
        assert base64.b64encode(password.encode()).decode() not in text
    assert "[redacted]" in result.transcript


# -- PIPELINING (RFC 2920) -----------------------------------------------


def client_server_order(transcript):
    return [
        line.split("] ")[1][:1]
        for line in transcript.splitlines()
        if "] C:" in line or "] S:" in line
    ]


async def test_pipelining_sends_the_envelope_in_one_go(smtp_server):
    server = smtp_server(extensions=["PIPELINING"])
    result = await deliver(
        settings_for(server), envelope(recipients=["a@example.com", "b@example.com"])
    )
    assert result.outcome == Outcome.ACCEPTED
    lines = [
        line.split(": ", 1)[1]
        for line in result.transcript.splitlines()
        if "] C: " in line or "] S: " in line
    ]
    start = lines.index("MAIL FROM:<a@example.com>")
    assert lines[start : start + 7] == [
        "MAIL FROM:<a@example.com>",
        "RCPT TO:<a@example.com>",
        "RCPT TO:<b@example.com>",
        "DATA",
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "250 2.1.5 Recipient OK",
    ]
    assert server.messages[0].rcpt_tos == ["a@example.com", "b@example.com"]


async def test_pipelining_with_refusals(smtp_server):
    def rcpt(address):
        return "550 5.1.1 No such user" if address.startswith("gone") else None

    server = smtp_server(extensions=["PIPELINING"], rcpt_reply=rcpt)
    result = await deliver(
        settings_for(server), envelope(recipients=["ok@example.com", "gone@example.com"])
    )
    assert result.outcome == Outcome.PARTIAL
    assert server.messages[0].rcpt_tos == ["ok@example.com"]
    all_gone = await deliver(settings_for(server), envelope(recipients=["gone@example.com"]))
    assert all_gone.outcome == Outcome.PERMANENT_FAILURE
    assert all_gone.recipients["gone@example.com"].code == 550
    refused = smtp_server(extensions=["PIPELINING"], mail_reply="553 5.7.1 Sender refused")
    result = await deliver(settings_for(refused), envelope(recipients=["a@example.com"]))
    assert result.outcome == Outcome.PERMANENT_FAILURE
    assert result.recipients["a@example.com"].code == 553  # not the RCPT's "need MAIL"


async def test_pipelining_can_be_disabled(smtp_server):
    server = smtp_server(extensions=["PIPELINING"])
    result = await deliver(
        settings_for(server, disable_extensions=frozenset({"PIPELINING"})), envelope()
    )
    order = client_server_order(result.transcript)
    mail_at = next(i for i, line in enumerate(result.transcript.splitlines()) if "C: MAIL" in line)
    assert result.outcome == Outcome.ACCEPTED
    assert "S: 250 2.1.0" in result.transcript.splitlines()[mail_at + 1]
    assert order.count("C") >= 4


async def test_reused_connection_resets_only_after_an_aborted_transaction(smtp_server):
    from django_reliable_mail.smtp import SMTPSession

    server = smtp_server(
        extensions=["PIPELINING"],
        rcpt_reply=lambda a: "450 4.2.1 busy" if a.startswith("busy") else None,
    )
    session = SMTPSession(settings_for(server))
    await session.open()
    try:
        first = await session.send(envelope(recipients=["busy@example.com"]))
        second = await session.send(envelope(recipients=["ok@example.com"]))
        third = await session.send(envelope(recipients=["ok2@example.com"]))
    finally:
        await session.close()
    assert first.outcome == Outcome.TRANSIENT_FAILURE
    assert second.outcome == third.outcome == Outcome.ACCEPTED
    assert server.log.commands.count("RSET") == 1
    assert "C: RSET" in second.transcript and "C: RSET" not in third.transcript


def batch_of(count):
    from django_reliable_mail.smtp.pool import Job

    return [Job(i, envelope(recipients=[f"r{i}@example.com"])) for i in range(count)]


async def test_the_next_message_s_commands_follow_the_previous_body(smtp_server):
    from django_reliable_mail.smtp.pool import send_batch

    server = smtp_server(extensions=["PIPELINING"])
    outcome = await send_batch(settings_for(server), batch_of(4), max_connections=1)
    results = [r for _, r in sorted(outcome.results, key=lambda item: item[0].key)]
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 4
    assert server.log.connections == 1
    assert [m.rcpt_tos for m in server.messages] == [[f"r{i}@example.com"] for i in range(4)]
    assert "follow (PIPELINING)" in results[0].transcript
    for later in results[1:]:
        assert "went out with the previous message's body" in later.transcript
        assert "C: MAIL FROM:<a@example.com>" in later.transcript
    assert "follow (PIPELINING)" not in results[-1].transcript  # nothing left to send


async def test_a_refused_body_does_not_hold_up_the_next_transaction(smtp_server):
    from django_reliable_mail.smtp.pool import send_batch

    server = smtp_server(extensions=["PIPELINING"], data_reply="554 5.6.0 content refused")
    outcome = await send_batch(settings_for(server), batch_of(3), max_connections=1)
    assert [r.outcome for _, r in outcome.results] == [Outcome.PERMANENT_FAILURE] * 3
    assert server.log.connections == 1 and server.log.commands.count("RSET") == 0


async def test_a_lost_connection_leaves_the_pipelined_next_message_for_a_new_one(smtp_server):
    from django_reliable_mail.smtp.pool import send_batch

    server = smtp_server(extensions=["PIPELINING"], disconnect_after_body=True)
    outcome = await send_batch(settings_for(server), batch_of(3), max_connections=1)
    # Each body may have arrived; each next message was still sent, on a new connection.
    assert sorted(job.key for job, _ in outcome.results) == [0, 1, 2]
    assert {r.outcome for _, r in outcome.results} == {Outcome.UNKNOWN}
    assert server.log.connections == 3 and outcome.untouched == []


async def test_a_provider_failure_hands_back_the_pipelined_message_untried(smtp_server):
    import time

    from django_reliable_mail.smtp.pool import send_batch

    server = smtp_server(extensions=["PIPELINING"], data_reply="550 5.4.5 daily quota exceeded")
    quota = ReplyRule(Verdict.PROVIDER, code="550", enhanced="5.4.5")
    started = time.monotonic()
    outcome = await send_batch(
        settings_for(server, reply_rules=(quota,)), batch_of(3), max_connections=1
    )
    assert [job.key for job, _ in outcome.results] == [0]
    assert [job.key for job in outcome.untouched] == [1, 2]
    transcript = outcome.results[0][1].transcript
    assert "closed without QUIT" in transcript and "C: QUIT" not in transcript
    assert time.monotonic() - started < 2  # no QUIT waiting inside an open DATA
