"""Django's contract for messages: which are skipped, which are refused and with what, and
what reaches the wire.

Where a message is sent, it goes to a real loopback SMTP server; what the server received in
MAIL FROM and RCPT TO is read from its command log, the message from its DATA.
"""

import email
import email.parser
import email.policy
import logging
import re
import string

import django
import pytest
from django.core import mail
from django.core.mail.backends.smtp import EmailBackend as DjangoSMTPBackend
from django.test import override_settings
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from django_reliable_mail.backends import EmailBackend
from django_reliable_mail.exceptions import HeaderInjectionError, InvalidMessageError
from django_reliable_mail.models import OutboundMessage
from django_reliable_mail.plain_mime import BARE_ADDRESS
from django_reliable_mail.serialize import MAX_ADDRESS_LENGTH, envelope_address, serialize
from django_reliable_mail.smtp.transport import wire_format
from django_reliable_mail.testing import LoopbackSMTPServer

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
    ({"subject": "Hi\x1cthere"}, "subject"),
    ({"subject": "Hi\x85there"}, "subject"),  # Django 5.2 would fold the subject here
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
    assert isinstance(excinfo.value, HeaderInjectionError)  # and so an InvalidMessageError
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
        ("john doe", "no '@'"),  # "john" alone is a local user, sent as Django sends it
        ("¡", "no '@'"),  # found by Hypothesis: Django cannot write it into a header
        ("0\xa0", "no '@'"),  # found by Hypothesis: a local user is bare, nothing around it
        (" tester", "no '@'"),
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


# -- generated addresses, against an oracle --------------------------------------------------

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"
INTERNATIONAL = "äöüßéñ日本"  # RFC 6531 atext beyond ASCII (sent with SMTPUTF8)
DOT_ATOM = re.compile(
    rf"[{re.escape(ATEXT + INTERNATIONAL)}]+(?:\.[{re.escape(ATEXT + INTERNATIONAL)}]+)*"
)
#: Internationalized domains and their A-labels, from published examples (not computed).
IDNA_DOMAINS = [
    ("bücher.example", "xn--bcher-kva.example"),
    ("münchen.de", "xn--mnchen-3ya.de"),
    ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
    ("日本.jp", "xn--wgv71a.jp"),
]

atom = st.text(alphabet=ATEXT, min_size=1, max_size=6) | st.text(
    alphabet=ATEXT + INTERNATIONAL, min_size=1, max_size=4
)
dot_atom = st.lists(atom, min_size=1, max_size=3).map(".".join)
#: (content, escape this character needlessly?) pairs: RFC 5321 qtextSMTP, quoted-pairSMTP.
quoted_chars = st.lists(
    st.tuples(
        st.characters(min_codepoint=32, max_codepoint=126) | st.sampled_from(INTERNATIONAL),
        st.booleans(),
    ),
    min_size=1,
    max_size=12,
)
label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
ascii_domain = st.lists(label, min_size=1, max_size=3).map(".".join).map(lambda d: (d, d))
domain = st.one_of(
    ascii_domain,
    st.sampled_from(IDNA_DOMAINS),
    st.sampled_from([("[192.0.2.1]", "[192.0.2.1]"), ("[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]")]),
)


def quoted(pairs) -> tuple[str, str]:
    """(the local part as written, as the oracle expects it in the envelope)."""
    content = "".join(c for c, _ in pairs)
    written = (
        '"'
        + "".join(
            "\\" + c if c in '"\\' or (needless and c.isascii()) else c for c, needless in pairs
        )
        + '"'
    )
    if DOT_ATOM.fullmatch(content):
        return written, content  # RFC 5322 3.4.1: the dot-atom form where one exists
    return written, '"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"'


local_part = st.one_of(dot_atom.map(lambda a: (a, a)), quoted_chars.map(quoted))


@st.composite
def mailboxes(draw) -> tuple[str, str]:
    """(an RFC 5321 mailbox as a user would write it, the envelope path the oracle expects)."""
    (local_written, local_expected), (domain_written, domain_expected) = (
        draw(local_part),
        draw(domain),
    )
    address = f"{local_written}@{domain_written}"
    wrapping = draw(st.sampled_from(["{}", "Ann <{}>", '"Doe, Ann" <{}>', "<{}>"]))
    return wrapping.format(address), f"{local_expected}@{domain_expected}"


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sender=mailboxes(), recipients=st.lists(mailboxes(), min_size=1, max_size=3))
def test_generated_mailboxes_reach_the_server_as_the_oracle_says(
    django_capture_on_commit_callbacks, sender, recipients
):
    msg = message(from_email=sender[0], to=[r[0] for r in recipients], reply_to=[sender[0]])
    with LoopbackSMTPServer() as server:  # a fresh log for each example
        assert sent_through(server, msg, callbacks=django_capture_on_commit_callbacks) == 1
    assert wire_paths(server, "MAIL FROM") == [sender[1]]
    assert wire_paths(server, "RCPT TO") == list(dict.fromkeys(r[1] for r in recipients))
    assert len(server.messages) == 1  # accepted: the server parsed every path


@settings(max_examples=400, deadline=None)
@given(mailbox=mailboxes())
def test_generated_mailboxes_serialize_to_the_oracles_envelope(mailbox):
    assert serialize(message(to=[mailbox[0]])).recipients == [mailbox[1]]


@settings(max_examples=150, deadline=None)
@given(address=st.from_regex(BARE_ADDRESS, fullmatch=True))
@example(address="0." * 80 + "0@" + "0." * 79 + "0")
def test_the_fast_path_and_the_parser_agree(address):
    # "<…>" takes the parser; the bare address takes plain_mime's BARE_ADDRESS shortcut.
    if len(address) > MAX_ADDRESS_LENGTH:  # both refuse it alike (a regression example)
        for given in (f"<{address}>", address):
            with pytest.raises(InvalidMessageError, match="at most 320"):
                envelope_address(given, role="recipient")
        return
    assert envelope_address(f"<{address}>", role="recipient") == address
    assert envelope_address(address, role="recipient") == address


#: Ways to spoil a valid (local part, domain), each refused whatever the parts are.
SPOILERS = [
    lambda local, domain: f'"{local}@{domain}',  # a quote left open
    lambda local, domain: f'{local}"@{domain}',
    lambda local, domain: f".{local}@{domain}",
    lambda local, domain: f"{local}.@{domain}",
    lambda local, domain: f"{local}@@{domain}",
    lambda local, domain: f"{local} {domain}",
    lambda local, domain: f"{local}@{domain}\x00",
    lambda local, domain: f"{local}\x07@{domain}",
    lambda local, domain: f"{local}@-{domain}",
    lambda local, domain: f"{local}@{domain}-",
    lambda local, domain: f"{local}@a..{domain}",
    lambda local, domain: f"{local}@x_{domain}",
    lambda local, domain: f"{local}@{'x' * 64}.{domain}",
    lambda local, domain: f"{local}@{domain} (comment)",
    lambda local, domain: f"{local}@{domain}, other@example.com",
]


@settings(max_examples=400, deadline=None)
@given(
    local=local_part,
    domain=ascii_domain,
    spoil=st.sampled_from(SPOILERS),
    role=st.sampled_from(["to", "cc", "bcc", "reply_to", "from_email"]),
)
def test_generated_invalid_addresses_are_refused_by_name(local, domain, spoil, role):
    address = spoil(local[0], domain[0])
    value = address if role == "from_email" else [address]
    with pytest.raises(InvalidMessageError) as excinfo:
        serialize(message(**{role: value}))
    assert repr(address) in str(excinfo.value)


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=40) | st.from_regex(r'[a-z"\\ .@<>,()\[\]:]{0,20}', fullmatch=True))
def test_any_text_is_an_envelope_path_or_invalid_message_error(text):
    try:
        (path,) = serialize(message(to=[text or "x"])).recipients
    except InvalidMessageError as exc:
        assert repr(text or "x") in str(exc) or "characters long" in str(exc)
        return
    # Whatever is accepted is an RFC 5321 path: a dot-string or a quoted string, then a
    # domain of LDH labels or an address literal.
    local, at, domain = path.rpartition("@")
    if not at:  # a local user without a domain, sent as Django sends it
        assert DOT_ATOM_ANY.fullmatch(domain), path
        return
    assert DOT_ATOM_ANY.fullmatch(local) or QUOTED_STRING.fullmatch(local), path
    assert re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|\[.+\]", domain), path


DOT_ATOM_ANY = re.compile(
    r'[^\s\x00-\x20\x7f-\x9f"(),.:;<>@\[\\\]]+(\.[^\s\x00-\x20\x7f-\x9f"(),.:;<>@\[\\\]]+)*'
)
QUOTED_STRING = re.compile(r'"([ !#-\[\]-~]|[^\x00-\x7f]|\\[ -~])+"')


# -- generated headers: refused, or parsed back the same -------------------------------------

#: Headers Django writes itself or treats specially: not extra-header material here.
OWN = {"from", "to", "cc", "bcc", "reply-to", "date", "message-id", "subject", "mime-version"}
header_names = st.one_of(
    st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True),
    st.text(alphabet=st.characters(max_codepoint=0x7F), min_size=1, max_size=10),
    st.text(min_size=1, max_size=10),
).filter(lambda n: n.lower() not in OWN and not n.lower().startswith("content-"))
header_values = st.one_of(
    st.text(max_size=100),
    st.lists(st.sampled_from(["a", " ", "\t", "\r", "\n", "\r\n", "ü", "=?", "?=", ":"])).map(
        "".join
    ),
)


def same_text(text: str) -> str:
    # Folding and RFC 2047 encoded words may move spaces at the edges and between words.
    return re.sub(r"[ \t]+", " ", text).strip(" ")


@settings(max_examples=400, deadline=None)
@given(name=header_names, value=header_values, subject=header_values)
def test_generated_headers_are_refused_or_parse_back_the_same(name, value, subject):
    from django.core.mail import BadHeaderError

    try:
        data = serialize(message(subject=subject, headers={name: value})).data
    except (BadHeaderError, InvalidMessageError) as exc:
        assert isinstance(exc, InvalidMessageError)  # ours, never one from deep inside
        return
    parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
    assert [same_text(str(v)) for v in parsed.get_all(name)] == [same_text(value)]
    assert same_text(str(parsed["Subject"])) == same_text(subject)
    assert parsed.get_content().replace("\r\n", "\n").rstrip("\n") == "Hello"
