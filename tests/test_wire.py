"""The bytes on the wire: CRLF line endings, dot-stuffing, pipelined replies."""

import asyncio
import re

import aiosmtplib
import pytest
from aiosmtplib.protocol import SMTPProtocol, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from django_reliable_mail.smtp.transport import ReplyKeepingProtocol, _dot_stuffed, wire_format

tricky = st.lists(st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b".."])).map(b"".join)


@given(st.binary(max_size=300) | tricky)
def test_dot_stuffing_and_line_endings_match_the_general_rule(data):
    normalized = normalize_message_line_endings(data)
    assert wire_format(data) == normalized
    assert _dot_stuffed(data) == re.sub(rb"(?m)^\.", b"..", normalized) + b".\r\n"


class _Transport(asyncio.Transport):
    def write(self, data):
        pass

    def is_closing(self):
        return False


def replies_after_a_late_segment(protocol_class):
    """Two pipelined replies, the second arriving while the first waits to be read."""

    async def run():
        protocol = protocol_class(loop=asyncio.get_running_loop())
        protocol.connection_made(_Transport())
        protocol._response_pending = True  # as after writing MAIL and RCPT together
        protocol.data_received(b"250 2.1.0 Sender OK\r\n")
        protocol.data_received(b"250 2.1.5 Recipient OK\r\n")  # before the first is read
        first = await protocol.read_response(timeout=1)
        protocol._response_pending = True
        second = await protocol.read_response(timeout=0.2)
        return first.message, second.message

    return asyncio.run(run())


def test_a_reply_arriving_before_the_previous_one_is_read_is_kept():
    assert replies_after_a_late_segment(ReplyKeepingProtocol) == (
        "2.1.0 Sender OK",
        "2.1.5 Recipient OK",
    )


def test_aiosmtplib_alone_drops_it():
    # Why ReplyKeepingProtocol exists; if aiosmtplib stops dropping, it can go.
    with pytest.raises(aiosmtplib.SMTPReadTimeoutError):
        replies_after_a_late_segment(SMTPProtocol)
