"""Django's contract for messages: which are skipped, which are refused and with what, and
what reaches the wire.

Where a message is sent, it goes to a real loopback SMTP server; what the server received in
MAIL FROM and RCPT TO is read from its command log, the message from its DATA.
"""

import email
import email.policy
import logging
import re

import django
import pytest
from django.core import mail
from django.core.mail.backends.smtp import EmailBackend as DjangoSMTPBackend
from django.test import override_settings

from django_reliable_mail.backends import EmailBackend
from django_reliable_mail.exceptions import HeaderInjectionError, InvalidMessageError
from django_reliable_mail.models import OutboundMessage
from django_reliable_mail.serialize import serialize
from django_reliable_mail.smtp.transport import wire_format

from .test_backend import message, provider_for, reliable_mail

pytestmark = pytest.mark.django_db
OUR_BACKEND = "django_reliable_mail.backends.EmailBackend"


def sent_through(server, *messages, callbacks, **backend_options):
    with override_settings(RELIABLE_MAIL=reliable_mail(main=provider_for(server))):
        with callbacks(execute=True):
            return EmailBackend(**backend_options).send_messages(list(messages))


def wire_paths(server, verb: str) -> list[str]:
    """The paths of every ``MAIL FROM`` or ``RCPT TO`` command, exactly as the command carried
    them (its parameters hold no ">", so the path ends at the last one). Connections may run
    in parallel: commands of several messages can interleave."""
    paths = []
    for command in server.log.commands:
        if command.startswith(f"{verb}:<"):
            paths.append(command[len(verb) + 2 : command.rindex(">")])
    return paths


# -- a message without recipients is skipped, as Django's SMTP backend skips it -------------


def test_a_message_without_recipients_is_skipped_and_the_rest_are_sent(
    smtp_server, caplog, django_capture_on_commit_callbacks
):
    server = smtp_server()
    caplog.set_level(logging.INFO, logger="django_reliable_mail")
    first, nobody, last = message(subject="first"), message(to=[]), message(subject="last")
    count = sent_through(server, first, nobody, last, callbacks=django_capture_on_commit_callbacks)
    assert count == 2
    assert sorted(OutboundMessage.objects.values_list("subject", flat=True)) == ["first", "last"]
    received = [email.message_from_bytes(m.data)["Subject"] for m in server.messages]
    assert sorted(received) == ["first", "last"]
    assert "message 2 of 3 not queued: it has no recipients" in caplog.text


def test_djangos_smtp_backend_counts_the_same(smtp_server):
    # The oracle: Django's own SMTP backend against the same kind of server.
    server = smtp_server()
    backend = DjangoSMTPBackend(host=server.host, port=server.port, timeout=5)
    assert backend.send_messages([message(), message(to=[], cc=[], bcc=[])]) == 1
    assert len(server.messages) == 1


def test_send_mass_mail_with_one_empty_datatuple(smtp_server, django_capture_on_commit_callbacks):
    server = smtp_server()
    datatuples = [
        ("one", "body", "app@example.com", ["a@example.com"]),
        ("nobody", "body", "app@example.com", []),
        ("two", "body", "app@example.com", ["b@example.com"]),
    ]
    config = reliable_mail(main=provider_for(server))
    with override_settings(RELIABLE_MAIL=config, EMAIL_BACKEND=OUR_BACKEND):
        with django_capture_on_commit_callbacks(execute=True):
            assert mail.send_mass_mail(datatuples) == 2
    assert sorted(wire_paths(server, "RCPT TO")) == ["a@example.com", "b@example.com"]


def test_only_messages_without_recipients_store_nothing_and_raise_nothing(smtp_server):
    server = smtp_server()
    with override_settings(RELIABLE_MAIL=reliable_mail(main=provider_for(server))):
        assert EmailBackend().send_messages([message(to=[]), message(to=[""])]) == 0
    assert OutboundMessage.objects.count() == 0


@pytest.mark.parametrize("fail_silently", [False, True])
def test_the_skip_rule_and_the_invalid_rule_together(
    fail_silently, smtp_server, django_capture_on_commit_callbacks
):
    """Without fail_silently one invalid message stores none (the skipped one changes
    nothing); with it the invalid one is skipped too and the valid one is sent."""
    server = smtp_server()
    batch = [message(), message(to=[]), message(to=["not an address"])]
    if not fail_silently:
        with pytest.raises(InvalidMessageError, match="not an address"):
            sent_through(server, *batch, callbacks=django_capture_on_commit_callbacks)
        assert OutboundMessage.objects.count() == 0 and server.log.commands == []
        return
    count = sent_through(
        server, *batch, callbacks=django_capture_on_commit_callbacks, fail_silently=True
    )
    assert count == 1 and len(server.messages) == 1


def test_a_message_that_django_cannot_serialize_names_the_cause():
    broken = message()
    broken.encoding = "no-such-charset"
    with pytest.raises(InvalidMessageError, match=r"cannot be serialized.*no-such-charset"):
        serialize(broken)


# -- header injection is Django's BadHeaderError --------------------------------------------

INJECTIONS = [
    ({"subject": "Hi\nBcc: victim@example.com"}, "subject"),
    ({"subject": "Hi\r\nBcc: victim@example.com"}, "subject"),
    ({"subject": "Hi\rthere"}, "subject"),
    ({"subject": "Hi\x0bthere"}, "subject"),  # Python's email folding breaks lines here too
    ({"subject": "Hi\u2028there"}, "subject"),
    ({"headers": {"X-Tag": "a\r\nBcc: victim@example.com"}}, "extra header 'X-Tag'"),
    ({"headers": {"X-Tag\r\nBcc": "victim@example.com"}}, "extra header name 'X-Tag\\r\\nBcc'"),
    ({"headers": {"X-Tag\nBcc": "victim@example.com"}}, "extra header name 'X-Tag\\nBcc'"),
    ({"headers": {"X-Tag: x\r\nBcc": "v@example.com"}}, "extra header name"),
    ({"headers": {"X Tag": "x"}}, "extra header name 'X Tag'"),
    ({"headers": {"X-Tag:": "x"}}, "extra header name 'X-Tag:'"),
    ({"headers": {"X-Tägg": "x"}}, "extra header name 'X-Tägg'"),
    ({"headers": {"": "x"}}, "extra header name ''"),
    ({"from_email": "app@example.com\nBcc: victim@example.com"}, "sender (from_email) address"),
    ({"to": ["user@example.com\r\nBcc: victim@example.com"]}, "recipient address"),
    ({"cc": ["Name\n <cc@example.com>"]}, "recipient address"),
    ({"bcc": ['"x\ny"@example.com']}, "recipient address"),
    ({"reply_to": ["r@example.com\nBcc: victim@example.com"]}, "reply-to address"),
]


@pytest.mark.parametrize(("kwargs", "named"), INJECTIONS)
def test_header_injection_is_djangos_bad_header_error(kwargs, named):
    from django.core.mail import BadHeaderError  # as Django documents it

    with override_settings(
        RELIABLE_MAIL=reliable_mail(main={"HOST": "127.0.0.1", "PORT": 2, "TLS": "none"})
    ):
        with pytest.raises(BadHeaderError) as excinfo:
            EmailBackend().send_messages([message(), message(**kwargs)])
    assert isinstance(excinfo.value, HeaderInjectionError | InvalidMessageError)
    assert named in str(excinfo.value)
    assert OutboundMessage.objects.count() == 0


def test_djangos_documented_view_pattern_answers_instead_of_failing(settings):
    """docs.djangoproject.com "Preventing header injection": the view catches
    BadHeaderError and answers; with our backend that still works."""
    from django.core.mail import BadHeaderError, send_mail

    settings.EMAIL_BACKEND = OUR_BACKEND
    settings.RELIABLE_MAIL = reliable_mail(main={"HOST": "127.0.0.1", "PORT": 2, "TLS": "none"})

    def view(subject):
        try:
            send_mail(subject, "message", "app@example.com", ["admin@example.com"])
        except BadHeaderError:
            return "Invalid header found."
        return "sent"

    assert view("Hello\nBcc: victim@example.com") == "Invalid header found."
    assert OutboundMessage.objects.count() == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"subject": "Hi\x00there"},
        {"subject": "Hi\x7fthere"},
        {"headers": {"X-Tag": "a\x1bb"}},
    ],
)
def test_control_characters_in_headers_are_refused_by_name(kwargs):
    with pytest.raises(InvalidMessageError, match="control character U\\+00"):
        serialize(message(**kwargs))


def test_tabs_and_non_ascii_header_values_are_fine(smtp_server, django_capture_on_commit_callbacks):
    server = smtp_server()
    msg = message(subject="Grüße\tand more", headers={"X-Tag": "ünïcode\tvalue"})
    sent_through(server, msg, callbacks=django_capture_on_commit_callbacks)
    received = email.message_from_bytes(server.messages[0].data, policy=email.policy.default)
    assert received["Subject"] == "Grüße\tand more" and received["X-Tag"] == "ünïcode\tvalue"


# -- quoted local parts (RFC 5321 4.1.2 Quoted-string) ---------------------------------------


def test_quoted_local_parts_reach_the_envelope_quoted(
    smtp_server, django_capture_on_commit_callbacks
):
    server = smtp_server()
    msg = message(
        from_email='"john doe"@example.com',
        to=['"a@b"@example.com', 'Ann <"ann smith"@example.com>'],
        cc=['"Doe, Jo" <"jo\\"e"@example.com>'],
        bcc=['"needless"@example.com', '"back\\\\slash"@example.com'],
        reply_to=['"reply here"@example.com'],
    )
    assert sent_through(server, msg, callbacks=django_capture_on_commit_callbacks) == 1
    assert wire_paths(server, "MAIL FROM") == ['"john doe"@example.com']
    assert wire_paths(server, "RCPT TO") == [
        '"a@b"@example.com',
        '"ann smith"@example.com',
        '"jo\\"e"@example.com',
        "needless@example.com",  # RFC 5322 3.4.1: no quotes where none are needed
        '"back\\\\slash"@example.com',
    ]
    row = OutboundMessage.objects.get()
    assert row.status == OutboundMessage.Status.SENT
    assert row.from_email == '"john doe"@example.com'
    assert server.messages[0].rcpt_tos[0] == '"a@b"@example.com'  # as aiosmtpd parsed it
    headers = email.message_from_bytes(server.messages[0].data, policy=email.policy.default)
    assert [a.addr_spec for a in headers["To"].addresses] == [
        '"a@b"@example.com',
        '"ann smith"@example.com',
    ]
    assert headers["Reply-To"].addresses[0].username == "reply here"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ('"john doe@example.com', "quoted string is not closed"),
        ('john"doe@example.com', "quoted string is not closed"),
        ('"john"doe@example.com', "quoted local part must be followed by '@'"),
        ('""@example.com', "local part is empty"),
        ('"tab\there"@example.com', "cannot hold a tab"),
        ('"a\\ü"@example.com', "backslash in quotes"),
        ('"a\x01"@example.com', "control character U+0001"),
        ("john doe@example.com", "not a dot-atom"),
        ("john..doe@example.com", "not a dot-atom"),
        (".john@example.com", "not a dot-atom"),
        ("john@example..com", "not a host name"),
        ("john@-example.com", "not a host name"),
        ("john@example.com.", "not a host name"),
        ("john@ex_ample.com", "not a host name"),
        ("john@[300.0.0.1]", "address literal"),
        ("john@[IPv6:fe80::1%eth0]", "address literal"),
        ("john@example.com (John)", "not a host name"),
        ("Doe, John <john@example.com>", "not a single email address"),
        ("<john@example.com", "not a dot-atom"),
        ("John <john@example.com> <x@example.com>", "angle brackets"),
        ("john", "no '@'"),
    ],
)
def test_what_is_still_refused_names_the_address_and_the_reason(address, reason):
    with pytest.raises(InvalidMessageError) as excinfo:
        serialize(message(to=[address]))
    assert repr(address) in str(excinfo.value) and reason in str(excinfo.value)


# -- an empty body is sent empty -------------------------------------------------------------


def djangos_bytes(msg) -> bytes:
    """Django's own MIME for ``msg``: 5.2's SafeMIMEText, 6.x's policy API (FACTS.md)."""
    if django.VERSION >= (6, 0):
        return msg.message(policy=email.policy.SMTP).as_bytes()
    return msg.message().as_bytes(linesep="\r\n")


def body_of(data: bytes) -> bytes:
    return data.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("subject", ["plain", "Grüße"])  # our direct path, and Django's
@pytest.mark.parametrize("body", ["", "\n", "x", "x\n", "a\n\nb"])
def test_the_body_is_exactly_the_body_given(subject, body):
    ours = serialize(message(subject=subject, body=body)).data
    theirs = wire_format(djangos_bytes(message(subject=subject, body=body)))
    given = body.replace("\n", "\r\n").encode()
    # On the wire every line ends with CRLF (RFC 5321 4.1.1.4); nothing else is added.
    assert body_of(ours) == (given if given.endswith(b"\r\n") or not given else given + b"\r\n")
    if django.VERSION >= (6, 0) and body == "":
        # The stdlib's set_content() ends every text with a line break: Django 6 alone
        # sends an empty body as one empty line (docs: Differences from Django's SMTP backend).
        assert body_of(theirs) == b"\r\n"
    else:
        assert body_of(ours) == body_of(theirs)


@pytest.mark.skipif(django.VERSION >= (6, 0), reason="5.2's header order and folding")
def test_an_empty_body_is_byte_for_byte_djangos_on_52():
    msg = message(body="")
    ours = serialize(msg).data
    theirs = djangos_bytes(msg)
    same_date_and_id = re.sub(
        rb"(?m)^(Date|Message-ID): .*$",
        lambda m: re.search(rb"(?m)^" + m.group(1) + rb": .*$", ours).group(),
        theirs,
    )
    assert ours == same_date_and_id


def test_an_empty_body_goes_out_empty(smtp_server, django_capture_on_commit_callbacks):
    server = smtp_server()
    sent_through(server, message(body=""), callbacks=django_capture_on_commit_callbacks)
    data = server.messages[0].data
    assert data.endswith(b"\r\n\r\n") and body_of(data) == b""
    assert data == bytes(OutboundMessage.objects.get().mime)
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed.get_content() == ""
