"""The directly written MIME of plain-text messages means what Django's own MIME means."""

import email
import email.policy

import django
import pytest
from django.core.mail import EmailMessage, EmailMultiAlternatives
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_reliable_mail.plain_mime import plain_message_bytes
from django_reliable_mail.serialize import serialize

ADDRESS_HEADERS = ("Subject", "From", "To", "Cc", "Reply-To")


def parsed(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


def django_bytes(message) -> bytes:
    return message.message().as_bytes()


def same_meaning(ours: bytes, theirs: bytes) -> None:
    a, b = parsed(ours), parsed(theirs)
    for name in ADDRESS_HEADERS:
        assert str(a.get(name)) == str(b.get(name)), name
    extra = {k.lower() for k in b.keys()} - {h.lower() for h in ADDRESS_HEADERS}
    for name in extra - {"date", "message-id", "content-transfer-encoding"}:
        assert a.get(name) == b.get(name), name
    assert a.get_content_type() == b.get_content_type() == "text/plain"
    assert a.get_content_charset() == "utf-8"

    def text(part):
        return part.get_content().replace("\r\n", "\n").rstrip("\n")

    assert text(a) == text(b)


local = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,20}[a-z0-9]", fullmatch=True).filter(
    lambda s: ".." not in s
)
domain = st.from_regex(r"[a-z0-9]{1,10}\.(com|org|example)", fullmatch=True)
address = st.builds(lambda lp, d: f"{lp}@{d}", local, domain)
named = st.builds(
    lambda name, a: f"{name} <{a}>",
    st.from_regex(r"[A-Za-z]{1,10}( [A-Za-z]{1,10})?", fullmatch=True),
    address,
)
any_address = st.one_of(address, named)
# Bodies built from the pieces that trip encoders up, mixed with arbitrary text.
TRICKY = ["=", "=41", ".", "..", " ", "\t", "\r\n", "\n", "\r", "From ", "ü", "€", "x" * 80]
body_text = st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=40)), max_size=60).map(
    "".join
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
    body=st.one_of(body_text, st.builds(lambda n: "y" * n, st.integers(990, 2200))),
    sender=any_address,
    to=st.lists(any_address, max_size=3),
    cc=st.lists(address, max_size=2),
    reply_to=st.lists(address, max_size=1),
    multi=st.booleans(),
)
def test_same_meaning_as_django(subject, body, sender, to, cc, reply_to, multi):
    kind = EmailMultiAlternatives if multi else EmailMessage
    message = kind(subject, body, sender, to or ["x@example.com"], cc=cc, reply_to=reply_to)
    ours = plain_message_bytes(message)
    if ours is None:  # headers too long for one line: Django folds them
        return
    data, message_id = ours
    assert parsed(data)["Message-ID"] == message_id
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")
    same_meaning(data, django_bytes(message))


def test_ascii_short_lines_are_7bit_anything_else_quoted_printable():
    short, _ = plain_message_bytes(EmailMessage("Hi", "Hello\nWorld", "a@example.com", ["b@x.org"]))
    assert b"Content-Transfer-Encoding: 7bit" in short
    assert short.endswith(b"\r\n\r\nHello\r\nWorld\r\n")
    if django.VERSION >= (6, 0):
        # Django 6 chooses the shorter of quoted-printable and base64: it writes those.
        for body in ("z" * 2000, "Grüße"):
            assert plain_message_bytes(EmailMessage("Hi", body, "a@x.org", ["b@x.org"])) is None
        return
    long, _ = plain_message_bytes(EmailMessage("Hi", "z" * 2000, "a@example.com", ["b@x.org"]))
    assert b"Content-Transfer-Encoding: quoted-printable" in long
    assert max(len(line) for line in long.split(b"\r\n")) <= 76
    utf8, _ = plain_message_bytes(EmailMessage("Hi", "Grüße", "a@example.com", ["b@x.org"]))
    assert b"Gr=C3=BC=C3=9Fe" in utf8


@pytest.mark.parametrize(
    "make",
    [
        lambda: EmailMessage("Grüße", "x", "a@example.com", ["b@x.org"]),  # needs encoding
        lambda: EmailMessage("s" * 80, "x", "a@example.com", ["b@x.org"]),  # needs folding
        lambda: EmailMessage("s", "x", '"Doe, J" <a@example.com>', ["b@x.org"]),
        lambda: EmailMessage("s", "x", "Jürgen <a@example.com>", ["b@x.org"]),
        lambda: EmailMessage("s", "x", "a@example.com", ["b@x.org"], headers={"From": "c@x.org"}),
        lambda: EmailMessage("s", "x", "a@example.com", ["b@x.org"], headers={"X-A": "ü"}),
        lambda: _with_attachment(),
        lambda: _with_html(),
        lambda: type("Custom", (EmailMessage,), {})("s", "x", "a@example.com", ["b@x.org"]),
    ],
)
def test_other_shapes_go_through_django(make):
    message = make()
    assert plain_message_bytes(message) is None
    serialized = serialize(message)  # still works, through Django
    assert parsed(serialized.data)["Message-ID"] == serialized.message_id


def _with_attachment():
    message = EmailMessage("s", "x", "a@example.com", ["b@x.org"])
    message.attach("a.txt", "content", "text/plain")
    return message


def _with_html():
    message = EmailMultiAlternatives("s", "x", "a@example.com", ["b@x.org"])
    message.attach_alternative("<p>x</p>", "text/html")
    return message


def test_extra_headers_and_bcc():
    message = EmailMessage(
        "s", "x", "a@example.com", ["b@x.org"], bcc=["hidden@x.org"], headers={"X-Tag": "t1"}
    )
    data, _ = plain_message_bytes(message)
    assert b"X-Tag: t1\r\n" in data
    assert b"hidden@x.org" not in data
    assert serialize(message).recipients == ["b@x.org", "hidden@x.org"]


def test_send_mail_messages_take_the_direct_path():
    message = EmailMultiAlternatives("Order 1", "Thanks", "shop@example.com", ["c@example.com"])
    serialized = serialize(message)
    assert serialized.data.startswith(b'Content-Type: text/plain; charset="utf-8"\r\n')
    assert parsed(serialized.data)["Message-ID"] == serialized.message_id
