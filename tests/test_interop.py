"""Interop with a real MTA none of us wrote: a private Postfix on loopback.

The app sends through Postfix in both TLS modes with SASL AUTH; the tests read the
delivered Maildir files and compare our stored attempt and transcript with Postfix's own
log of the same session.
"""

import asyncio
import os
import re
import tempfile
from collections import Counter
from pathlib import Path

import aiosmtplib
import pytest
from django.core.mail import EmailMessage
from django.test import override_settings

from django_reliable_mail.backends import EmailBackend
from django_reliable_mail.models import OutboundMessage

from . import postfix as pf

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not pf.available() and os.environ.get("CI") != "true",
        reason="needs Debian's postfix, sasl2-bin and libsasl2-modules, as root",
    ),
]


@pytest.fixture(scope="module")
def postfix():
    import trustme

    root = Path(tempfile.mkdtemp(prefix="rmail-postfix-", dir="/tmp"))
    root.chmod(0o755)  # Postfix's own processes run as the postfix user
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = str(root / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    instance = pf.start(
        root,
        cert_pem="".join(blob.bytes().decode() for blob in cert.cert_chain_pems),
        key_pem=cert.private_key_pem.bytes().decode(),
        ca_file=ca_file,
    )
    yield instance
    instance.stop()


def config(postfix, *, implicit=False, **extra):
    provider = {
        "PRESET": "postfix",
        "HOST": "127.0.0.1",
        "PORT": postfix.implicit_port if implicit else postfix.starttls_port,
        "TLS": "implicit" if implicit else "starttls",
        "CA_FILE": postfix.ca_file,
        "USERNAME": postfix.username,
        "PASSWORD": postfix.password,
        "TIMEOUT": 15,
        **extra,
    }
    return {"DEFAULT_PROVIDER": "postfix", "MODE": "immediate", "PROVIDERS": {"postfix": provider}}


def send(postfix, message, callbacks, **config_extra):
    with override_settings(RELIABLE_MAIL=config(postfix, **config_extra)):
        with callbacks(execute=True):
            assert EmailBackend().send_messages([message]) == 1
    row = OutboundMessage.objects.latest("id")
    return row, row.attempts.latest("number")


def client_commands(transcript: str) -> Counter:
    verbs = Counter()
    for line in transcript.splitlines():
        match = re.match(r"^\[\+[\d.]+s\] C: ([A-Z]+)\b", line)
        if match:
            verbs[match.group(1).lower()] += 1
    return verbs


def delivered_with(postfix, marker):
    for message in postfix.delivered():
        if message["Subject"] == marker:
            return message
    for _ in range(50):
        for message in postfix.delivered():
            if message["Subject"] == marker:
                return message
    raise AssertionError(f"{marker!r} was not delivered:\n{postfix.log()}")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("implicit", "mechanism"), [(False, "PLAIN"), (True, "LOGIN"), (True, "CRAM-MD5")]
)
def test_delivery_matches_postfix_own_log(
    postfix, implicit, mechanism, django_capture_on_commit_callbacks
):
    subject = f"interop {mechanism} {'implicit' if implicit else 'starttls'}"
    message = EmailMessage(subject, "Hello Postfix", "app@interop.test", ["user@interop.test"])
    row, attempt = send(
        postfix,
        message,
        django_capture_on_commit_callbacks,
        implicit=implicit,
        AUTH_MECHANISMS=[mechanism],
    )
    assert attempt.outcome == "accepted", attempt.error
    assert row.status == OutboundMessage.Status.SENT
    delivered = delivered_with(postfix, subject)
    assert delivered["Message-ID"] == row.message_id

    # Postfix's account of the same session.
    queue_id = attempt.queue_id
    assert queue_id and re.fullmatch(r"[0-9A-F]{6,}", queue_id)
    client = postfix.wait_for_log(
        rf"smtpd\[(\d+)\]: {queue_id}: client=localhost\[127\.0\.0\.1\], "
        r"sasl_method=(\S+), sasl_username=(\S+)"
    )
    pid = client.group(1)  # the smtpd process that served exactly our session
    assert client.group(2) == mechanism and client.group(3) == postfix.username
    tls = postfix.wait_for_log(
        rf"smtpd\[{pid}\]: (?:\S+ )?TLS connection established from localhost\[127\.0\.0\.1\]: "
        r"(\S+) with cipher (\S+)"
    )
    assert (tls.group(1), tls.group(2)) == (attempt.tls_version, attempt.tls_cipher)
    postfix.wait_for_log(rf"{queue_id}: message-id={re.escape(row.message_id)}")
    postfix.wait_for_log(rf"{queue_id}: to=<user@interop.test>.*status=sent")
    # Postfix counts the commands it received; ours are in the transcript.
    disconnect = postfix.wait_for_log(
        rf"smtpd\[{pid}\]: disconnect from localhost\[127\.0\.0\.1\] (.*?) commands=\d+"
    )
    theirs = {k: int(v) for k, v in (item.split("=") for item in disconnect.group(1).split())}
    assert theirs == dict(client_commands(attempt.transcript))
    # Postfix advertises PIPELINING, and we pipelined MAIL/RCPT/DATA: it had no complaint.
    assert "PIPELINING" in " ".join(attempt.extensions_used)
    assert "improper command pipelining" not in postfix.log()
    assert postfix.password not in attempt.transcript


@pytest.mark.django_db
def test_dsn_and_smtputf8_through_postfix(postfix, django_capture_on_commit_callbacks):
    message = EmailMessage("interop utf8", "Grüße", "app@interop.test", ["jörg@interop.test"])
    message.reliable_mail = {
        "dsn_notify": ["FAILURE", "DELAY"],
        "dsn_ret": "HDRS",
        "dsn_envid": "order-42",
    }
    _, attempt = send(postfix, message, django_capture_on_commit_callbacks)
    assert attempt.outcome == "accepted", attempt.error
    assert {"SMTPUTF8", "RET=HDRS", "ENVID=order-42"} <= set(attempt.mail_parameters)
    assert attempt.rcpt_parameters == ["NOTIFY=FAILURE,DELAY"]
    advertised = " ".join(attempt.extensions_advertised)
    for keyword in ("PIPELINING", "DSN", "SMTPUTF8", "CHUNKING"):
        assert keyword in advertised
    delivered = delivered_with(postfix, "interop utf8")
    assert "jörg@interop.test" in delivered["Delivered-To"]
    postfix.wait_for_log(rf"{attempt.queue_id}: to=<jörg@interop.test>.*status=sent")


@pytest.mark.django_db
def test_quoted_local_parts_through_postfix(postfix, django_capture_on_commit_callbacks):
    # RFC 5321 Quoted-string local parts: Postfix takes them as they are and logs them quoted.
    message = EmailMessage(
        "interop quoted",
        "",  # and an empty body arrives empty
        '"john doe"@interop.test',
        ['"a b"@interop.test', 'Ann <"x@y"@interop.test>'],
    )
    row, attempt = send(postfix, message, django_capture_on_commit_callbacks)
    assert attempt.outcome == "accepted", attempt.error
    assert row.recipients == ['"a b"@interop.test', '"x@y"@interop.test']
    postfix.wait_for_log(rf'{attempt.queue_id}: from=<"john doe"@interop\.test>')
    for recipient in row.recipients:
        postfix.wait_for_log(rf"{attempt.queue_id}: to=<{re.escape(recipient)}>.*status=sent")
    delivered = delivered_with(postfix, "interop quoted")
    assert delivered.get_payload() == ""


@pytest.mark.django_db
def test_disabled_extensions_against_postfix(postfix, django_capture_on_commit_callbacks):
    message = EmailMessage("interop disabled", "x", "app@interop.test", ["user@interop.test"])
    message.reliable_mail = {"dsn_notify": ["FAILURE"]}
    _, attempt = send(
        postfix,
        message,
        django_capture_on_commit_callbacks,
        DISABLE_EXTENSIONS=["DSN", "CHUNKING", "PIPELINING"],
    )
    assert attempt.outcome == "accepted"
    used = " ".join(attempt.extensions_used)
    assert "DSN" not in used and "CHUNKING" not in used and "PIPELINING" not in used
    assert attempt.rcpt_parameters == []  # DSN was requested but is not in effect
    delivered_with(postfix, "interop disabled")


def test_postfix_rejects_an_unknown_mail_parameter(postfix):
    # Why MAIL FROM parameters must come from the effective EHLO set only.
    async def raw():
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=postfix.implicit_port,
            use_tls=True,
            cert_bundle=postfix.ca_file,
            username=postfix.username,
            password=postfix.password,
        ) as s:
            return await s.execute_command(b"MAIL", b"FROM:<app@interop.test>", b"REQUIRETLS")

    reply = asyncio.run(raw())
    assert reply.code == 555 and "5.5.4" in reply.message


@pytest.mark.django_db
def test_requiretls_is_refused_before_mail_when_postfix_lacks_it(
    postfix, django_capture_on_commit_callbacks
):
    message = EmailMessage("interop requiretls", "x", "app@interop.test", ["user@interop.test"])
    message.reliable_mail = {"require_tls": True}
    _, attempt = send(postfix, message, django_capture_on_commit_callbacks)
    assert attempt.outcome == "permanent_failure"
    assert "does not offer it" in attempt.error
    assert "MAIL FROM" not in attempt.transcript


@pytest.mark.django_db
def test_wrong_password_against_postfix(postfix, django_capture_on_commit_callbacks):
    message = EmailMessage("interop wrong", "x", "app@interop.test", ["user@interop.test"])
    row, attempt = send(
        postfix,
        message,
        django_capture_on_commit_callbacks,
        PASSWORD="not-the-password",
        AUTH_MECHANISMS=["PLAIN"],
    )
    assert attempt.outcome == "config_error" and attempt.reply_code == 535
    assert row.status == OutboundMessage.Status.RETRYING and row.attempt_count == 0
    postfix.wait_for_log(r"SASL PLAIN authentication failed")
    assert "not-the-password" not in attempt.transcript


@pytest.mark.django_db
def test_a_batch_pipelines_each_transaction_behind_the_previous_body(postfix):
    from django_reliable_mail import delivery
    from django_reliable_mail.conf import get_config
    from django_reliable_mail.models import DeliveryAttempt

    subjects = [f"pipelined batch {i}" for i in range(4)]
    with override_settings(RELIABLE_MAIL={**config(postfix, MAX_CONNECTIONS=1), "MODE": "queue"}):
        settings = get_config()
        messages = [
            EmailMessage(subject, "Hello", "app@interop.test", ["user@interop.test"])
            for subject in subjects
        ]
        delivery.enqueue([delivery.prepare(m, config=settings, provider=None) for m in messages])
        summary = delivery.deliver_due(config=settings, limit=10)
    assert (summary.sent, summary.connections) == (4, 1)
    attempts = list(DeliveryAttempt.objects.order_by("id"))
    for later in attempts[1:]:
        assert "went out with the previous message's body" in later.transcript
    for subject in subjects:
        delivered_with(postfix, subject)
    for attempt in attempts:
        postfix.wait_for_log(rf"{attempt.queue_id}: to=<user@interop.test>.*status=sent")
    assert "improper command pipelining" not in postfix.log()
