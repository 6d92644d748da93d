"""The choke point for server text: whatever comes in, what comes out can be stored and
logged, shows what was sent, and holds no secret."""

import re

from hypothesis import example, given
from hypothesis import strategies as st

from django_reliable_mail.smtp.sanitize import REDACTED, Secrets, clean, visible


def oracle(data: bytes) -> str:
    """Independent of the implementation: Python's own backslashreplace, then controls."""
    text = data.decode("utf-8", "backslashreplace")
    return re.sub(
        "[\x00-\x08\x0b-\x1f\x7f]",
        lambda m: "" if m.group() == "\x00" else f"\\x{ord(m.group()):02x}",
        text,
    )


@given(st.binary(max_size=300))
@example(b"550 5.1.1 Empf\xe4nger unbekannt")
@example(b"250 ok\x00\x00 queued")
@example(b"\x1b[31mred\x1b[0m\r\n")
def test_bytes_as_aiosmtplib_hands_them_over(data):
    # aiosmtplib decodes replies with surrogateescape; the result must match the bytes.
    as_received = data.decode("utf-8", "surrogateescape")
    assert visible(as_received) == oracle(data) == visible(data)
    cleaned = clean(as_received, limit=None)
    cleaned.encode("utf-8")  # no lone surrogate left
    assert "\x00" not in cleaned


def test_latin1_byte_stays_visible():
    assert clean(b"550 Empf\xe4nger unbekannt".decode("utf-8", "surrogateescape")) == (
        "550 Empf\\xe4nger unbekannt"
    )


def test_lone_surrogate_that_is_not_a_byte():
    assert visible("a\ud800b") == "a\\ud800b"


def test_ordinary_text_is_unchanged():
    text = "250-smtp.example.com Hello\n250 2.0.0 Ok: queued as 4Xyz\tdone — ünïcödé"
    assert clean(text) == text


@given(st.text(max_size=200), st.integers(min_value=0, max_value=100))
def test_cap_says_how_much_was_cut(text, limit):
    cleaned = clean(text, limit=limit)
    full = clean(text, limit=None)
    if len(full) <= limit:
        assert cleaned == full
    else:
        assert cleaned.startswith(full[:limit])
        assert cleaned.endswith(f"… [{len(full) - limit} more characters not kept]")


SECRET = "pw-Zq8#secret"


@given(
    st.text(max_size=40),
    st.text(max_size=40),
    st.lists(st.sampled_from(["\x00", ""]), max_size=len(SECRET) + 1),
    st.integers(min_value=0, max_value=120),
)
def test_no_secret_survives_nul_splitting_or_the_cap(before, after, nuls, limit):
    # A server echoing the password with NULs inside it, cut anywhere by the cap.
    echoed = "".join(c + (nuls[i] if i < len(nuls) else "") for i, c in enumerate(SECRET))
    secrets = Secrets([SECRET])
    cleaned = clean(before + echoed + after, secrets=secrets, limit=limit)
    assert SECRET not in cleaned
    # Nothing of the secret's second half survives a cut: it is replaced before capping.
    assert SECRET[len(SECRET) // 2 :] not in cleaned


def test_longest_secret_first_and_short_ones_ignored():
    secrets = Secrets(["abcdef", "abc", "xy", None, b"bytes-secret"])
    assert secrets.scrub("abcdef abc xy bytes-secret") == (f"{REDACTED} {REDACTED} xy {REDACTED}")
    assert not Secrets([None, "", "ab"])


def test_secret_with_a_control_character_is_scrubbed_as_shown():
    secrets = Secrets(["pass\x1bword"])
    assert clean("535 bad pass\x1bword", secrets=secrets) == f"535 bad {REDACTED}"


def test_none_is_empty():
    assert clean(None) == ""
