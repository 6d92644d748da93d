"""The bytes DATA carries: CRLF line endings and dot-stuffing."""

import re

from aiosmtplib.protocol import normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from django_reliable_mail.smtp.transport import _dot_stuffed, wire_format

tricky = st.lists(st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b".."])).map(b"".join)


@given(st.binary(max_size=300) | tricky)
def test_dot_stuffing_and_line_endings_match_the_general_rule(data):
    normalized = normalize_message_line_endings(data)
    assert wire_format(data) == normalized
    assert _dot_stuffed(data) == re.sub(rb"(?m)^\.", b"..", normalized) + b".\r\n"
