"""The SMTP dialogue, recorded: connect, TLS, EHLO, AUTH, then MAIL/RCPT/DATA per message.

aiosmtplib does the I/O. We drive every command ourselves instead of using its
``sendmail()`` so that each MAIL FROM parameter comes from the *effective* capabilities
only (see ``capabilities.py``), every reply is kept per recipient, and the moment the body
has been handed to the socket is known exactly: a connection that dies after that point
may have delivered the mail, which is the ``unknown`` outcome.

Invariants: a reply counts as success only where ``stages.py`` says so; a reply that is
not well-formed (RFC 5321 §4.2) raises :class:`MalformedReply` and closes the connection;
``SMTPSession.open()`` raises only :class:`SMTPFailure`; ``send()`` and ``deliver()`` raise
only ``asyncio.CancelledError`` and :class:`BodyStartNotRecorded` — whatever the server or
the network does becomes an :class:`AttemptResult`, finished by :func:`.result.finish`.
Every use of aiosmtplib's private names is in :class:`ReplyKeepingProtocol` and
:class:`RecordingSMTP`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib
from aiosmtplib import SMTPResponse
from aiosmtplib.protocol import (
    MAX_LINE_LENGTH,
    MAX_RESPONSE_LENGTH,
    SMTPProtocol,
    normalize_message_line_endings,
)

from .capabilities import SUPPORTED_AUTH_MECHANISMS, Capabilities
from .classify import Outcome, Reply, ReplyRule, Verdict, combine_outcome
from .result import AttemptResult, RecipientResult, finish
from .sanitize import Secrets
from .stages import EXPECTED, HIGHEST_CODE, LOWEST_CODE, Stage, is_success, is_unexpected, judge
from .transcript import REDACTED, Transcript

__all__ = [
    "TLS_MODES",
    "AttemptResult",
    "BodyStartNotRecorded",
    "Envelope",
    "MalformedReply",
    "RecipientResult",
    "SMTPFailure",
    "SMTPSession",
    "ServerSettings",
    "deliver",
    "failure_result",
    "wire_format",
]

TLS_MODES = ("implicit", "starttls", "opportunistic", "none")
_CONTROL_CHARACTERS = re.compile(rb"[\x00-\x1f\x7f]")
_CONTROL_TEXT = re.compile("[\x00-\x1f\x7f]")
#: Replies kept while an earlier one waits to be read (pipelining): far above any real
#: burst of RCPT replies, low enough that a server cannot fill our memory.
MAX_KEPT_REPLIES = 1024 * 1024
#: How much of a malformed reply is kept to show what arrived.
MAX_MALFORMED_KEPT = MAX_LINE_LENGTH

#: A token provider for XOAUTH2: called with ``username=`` and ``force_refresh=``; may be
#: sync or async; returns the access token.
TokenProvider = Callable[..., str | Awaitable[str]]


@dataclass(frozen=True)
class ServerSettings:
    """Everything the transport needs to know about one provider. No Django here."""

    host: str
    port: int
    tls: str = "starttls"
    ca_file: str | None = None
    #: A client certificate (and its key, when not in the same file) offered in TLS.
    client_certfile: str | None = None
    client_keyfile: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    oauth2_token: TokenProvider | None = field(default=None, repr=False)
    auth_mechanisms: tuple[str, ...] = SUPPORTED_AUTH_MECHANISMS
    disable_extensions: frozenset[str] = frozenset()
    timeout: float = 30.0
    local_hostname: str | None = None
    allow_plaintext_auth: bool = False
    reply_rules: tuple[ReplyRule, ...] = ()
    #: The provider's own recipients-per-transaction limit (besides the server's RCPTMAX).
    max_recipients: int | None = None
    transcript_max_chars: int = 64 * 1024
    record_transcript: bool = True


@dataclass
class Envelope:
    sender: str
    recipients: Sequence[str]
    data: bytes
    require_tls: bool = False
    dsn_notify: tuple[str, ...] = ()
    dsn_ret: str | None = None
    dsn_envid: str | None = None


class SMTPFailure(Exception):
    """A failure that ends the connection set-up; carries how to classify it."""

    def __init__(
        self,
        message: str,
        *,
        outcome: Outcome,
        provider_level: bool,
        reply: Reply | None = None,
        received: str = "",
    ) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.provider_level = provider_level
        self.reply = reply
        #: What the server sent when it was no well-formed reply (``reply`` is then None).
        self.received = received


class BodyStartNotRecorded(Exception):
    """The ``before_body`` callback failed: the body-start mark is not known to be durable,
    so the body was not sent and the connection was dropped. Not the server's doing: it
    propagates, for the caller to stop sending (its cause is the callback's error)."""


class MalformedReply(aiosmtplib.SMTPResponseException):
    """What the server sent is no SMTP reply (RFC 5321 §4.2): a code outside 200-599 or
    not three digits, a line over the length limit, lines of one reply with different
    codes, or bytes that no command asked for. The reply's framing can no longer be
    trusted: the connection must be closed."""

    def __init__(self, reason: str, received: bytes | bytearray) -> None:
        self.reason = reason
        #: What came, its lines joined by newlines like a reply's text (undecodable bytes
        #: kept as surrogates, like aiosmtplib's).
        kept = bytes(received[:MAX_MALFORMED_KEPT]).rstrip(b"\r\n").replace(b"\r\n", b"\n")
        self.received = kept.decode("utf-8", "surrogateescape")
        super().__init__(-1, reason)


def _parse_reply_line(line: bytes) -> tuple[int, bool, bytes]:
    """(code, more lines follow, text) of one line ending in LF; raises MalformedReply."""
    code_digits, separator = line[:3], line[3:4]
    body = line.rstrip(b"\r\n")
    if not (code_digits.isdigit() and LOWEST_CODE <= int(code_digits) <= HIGHEST_CODE):
        raise MalformedReply("the reply code is not a number from 200 to 599", line)
    if separator not in (b" ", b"-") and len(body) > 3:
        raise MalformedReply("the reply code is not followed by a space or a hyphen", line)
    return int(code_digits), separator == b"-", body[4:].strip(b" \t")


class ReplyKeepingProtocol(SMTPProtocol):
    """aiosmtplib's protocol, strict about reply syntax and keeping pipelined replies.

    Strict: each line of a reply must start with a code from 200 to 599 followed by a
    space, a hyphen or the line's end, be at most ``MAX_LINE_LENGTH`` bytes, and carry the
    same code as the other lines of its reply; a whole reply is at most
    ``MAX_RESPONSE_LENGTH`` bytes. Anything else raises :class:`MalformedReply` (aiosmtplib
    alone reads "-12", " 12" or "099" as codes and gives a mixed reply its last code).

    Keeping: aiosmtplib drops data that arrives while a parsed reply is still waiting to
    be picked up. With pipelining (RFC 2920) the next reply can arrive in exactly that
    moment (a finished read reaches its reader through two turns of the event loop), and a
    dropped reply turns into a timeout. Such data is kept in the buffer instead, and the
    next read takes its reply from there.
    """

    _overflowed = False

    def data_received(self, data: bytes) -> None:
        waiter = self._response_waiter
        if waiter is None or not self._response_pending:
            return  # nothing asked for it (aiosmtplib drops it too)
        if waiter.done():
            if waiter.cancelled() or waiter.exception() is not None:
                return  # the read failed: the connection is being given up
            if len(self._buffer) + len(data) > MAX_KEPT_REPLIES:
                self._overflowed = True
                del self._buffer[:]
                return
            self._buffer.extend(data)
            return
        self._buffer.extend(data)
        self._parse_into(waiter)

    def _parse_into(self, waiter: asyncio.Future[SMTPResponse]) -> None:
        try:
            response = self._read_response_from_buffer()
        except MalformedReply as exc:
            del self._buffer[:]
            self._set_response_exception(waiter, exc)
            return
        if response is not None:
            waiter.set_result(response)

    def _read_response_from_buffer(self) -> SMTPResponse | None:
        """The first whole reply in the buffer (removed from it), or None if incomplete."""
        buffer = self._buffer
        codes: set[int] = set()
        texts: list[bytes] = []
        offset = 0
        while True:
            end = buffer.find(b"\n", offset)
            if end == -1:
                if len(buffer) - offset > MAX_LINE_LENGTH:
                    raise MalformedReply("a reply line is too long", buffer[offset:])
                if len(buffer) > MAX_RESPONSE_LENGTH:
                    raise MalformedReply("the reply is too long", buffer)
                return None
            line = bytes(buffer[offset : end + 1])
            if len(line) > MAX_LINE_LENGTH:
                raise MalformedReply("a reply line is too long", line)
            code, more, text = _parse_reply_line(line)
            codes.add(code)
            texts.append(text)
            offset = end + 1
            if not more:
                break
        if len(codes) > 1:
            raise MalformedReply("the lines of one reply carry different codes", buffer[:offset])
        del buffer[:offset]
        return SMTPResponse(code, b"\n".join(texts).decode("utf-8", "surrogateescape"))

    async def read_response(self, timeout: float | None = None) -> SMTPResponse:
        if self._overflowed:
            raise MalformedReply("more replies at once than any command asked for", b"")
        waiter = self._response_waiter
        if waiter is not None and not waiter.done() and self._buffer:
            self._parse_into(waiter)
        if (
            waiter is not None
            and waiter.done()
            and not waiter.cancelled()
            and waiter.exception() is None
            and self.transport is not None
        ):
            # The reply is here already (pipelined replies mostly arrive together): take it
            # without the timer and callbacks a wait_for would set up for it.
            self._response_pending = False
            self._response_waiter = self._loop.create_future()
            return waiter.result()
        return await super().read_response(timeout=timeout)

    async def execute_command(self, *args: bytes, timeout: float | None = None) -> SMTPResponse:
        self.refuse_unasked_data()
        return await super().execute_command(*args, timeout=timeout)

    def refuse_unasked_data(self) -> None:
        """Before a command: a reply already here answers nothing we sent (RFC 5321 §4.2)."""
        waiter = self._response_waiter
        answered = (
            waiter is not None
            and waiter.done()
            and not waiter.cancelled()
            and waiter.exception() is None
        )
        if self._buffer or answered:
            unasked = bytes(self._buffer)
            del self._buffer[:]
            raise MalformedReply("the server sent a reply before the command", unasked)

    @contextlib.asynccontextmanager
    async def exchange(self, *, keep_listening: bool = False) -> AsyncIterator[None]:
        """Hold the connection for commands written together and their replies, read with
        :meth:`next_reply` (RFC 2920). ``keep_listening``: replies to commands written last
        arrive after the exchange, and are kept for the next one."""
        lock = self._command_lock
        if lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        async with lock:
            self._response_pending = True
            try:
                yield
            finally:
                self._response_pending = keep_listening

    async def next_reply(self, timeout: float | None) -> SMTPResponse:
        """The next reply inside :meth:`exchange`."""
        try:
            return await self.read_response(timeout=timeout)
        finally:
            # Keep accepting the replies still to come (aiosmtplib drops unsolicited data).
            self._response_pending = True


def _log_malformed(transcript: Transcript, exc: MalformedReply) -> None:
    transcript.received(exc.received)
    transcript.event(f"malformed reply: {exc.reason}; the connection cannot be trusted")


class RecordingSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client with every command and reply written to a transcript."""

    def __init__(self, *args: Any, transcript: Transcript, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transcript = transcript
        self._auth_exchange = False
        #: Set once the socket is really gone, so callers can wait for TLS teardown.
        self.connection_gone = asyncio.Event()

    @property
    def strict_protocol(self) -> ReplyKeepingProtocol:
        """The connection's protocol; SMTPServerDisconnected once it is gone."""
        protocol = self.protocol
        if not isinstance(protocol, ReplyKeepingProtocol) or not self.is_connected:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        return protocol

    async def _create_connection(self, timeout: float | None) -> SMTPResponse:
        # aiosmtplib builds a protocol of its own here, with no hook to choose another, and
        # reads the greeting with it: ours must parse the greeting too. The greeting's code
        # is judged by the session (stages.py), not here.
        loop = asyncio.get_running_loop()
        protocol = ReplyKeepingProtocol(
            loop=loop, connection_lost_callback=self._on_connection_lost
        )
        tls_context = self.tls_context if self.use_tls else None
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(
                    lambda: protocol,
                    host=self.hostname,
                    port=self.port,
                    ssl=tls_context,
                    server_hostname=self.hostname if tls_context else None,
                    ssl_handshake_timeout=timeout if tls_context else None,
                ),
                timeout=timeout,
            )
        except TimeoutError as exc:
            raise aiosmtplib.SMTPConnectTimeoutError(
                f"Timed out connecting to {self.hostname} on port {self.port}"
            ) from exc
        except OSError as exc:
            raise aiosmtplib.SMTPConnectError(
                f"Error connecting to {self.hostname} on port {self.port}: {exc}"
            ) from exc
        self.protocol, self.transport = protocol, transport
        try:
            return await protocol.read_response(timeout=timeout)
        except aiosmtplib.SMTPServerDisconnected as exc:
            raise aiosmtplib.SMTPConnectError(
                f"Lost the connection before a greeting: {exc}"
            ) from exc
        except aiosmtplib.SMTPTimeoutError as exc:
            raise aiosmtplib.SMTPConnectTimeoutError("Timed out waiting for the greeting") from exc

    def _on_connection_lost(self, protocol: Any) -> None:
        self.connection_gone.set()
        super()._on_connection_lost(protocol)

    async def execute_command(self, *args: bytes, timeout: Any = aiosmtplib.smtp.Default.token):
        verb = args[0].upper() if args else b""
        if self._auth_exchange:
            self.transcript.client(REDACTED)
        elif verb == b"AUTH":
            mechanism = args[1].decode("ascii", "replace") if len(args) > 1 else ""
            self.transcript.client(f"AUTH {mechanism}" + (f" {REDACTED}" if len(args) > 2 else ""))
        else:
            self.transcript.client(b" ".join(args).decode("utf-8", "replace"))
        try:
            response = await super().execute_command(*args, timeout=timeout)
        except aiosmtplib.SMTPTimeoutError:
            self.transcript.event("timed out waiting for the reply")
            raise
        except aiosmtplib.SMTPServerDisconnected:
            self.transcript.event("connection lost")
            raise
        except MalformedReply as exc:
            _log_malformed(self.transcript, exc)
            self.close()
            raise
        if verb == b"AUTH" or self._auth_exchange:
            # RFC 4954: 334 challenges (and the answers to them) carry credentials.
            self._auth_exchange = response.code in EXPECTED[Stage.AUTH].continuation
            if self._auth_exchange:
                self.transcript.server(response.code, REDACTED)
                return response
        self.transcript.server(response.code, response.message)
        return response

    async def starttls(self, **kwargs: Any) -> SMTPResponse:  # type: ignore[override]
        self.transcript.client("STARTTLS")
        try:
            response = await super().starttls(**kwargs)
        except MalformedReply as exc:
            _log_malformed(self.transcript, exc)
            self.close()
            raise
        except aiosmtplib.SMTPResponseException as exc:
            self.transcript.server(exc.code, exc.message)
            raise
        self.transcript.server(response.code, response.message)
        return response


def build_tls_context(
    ca_file: str | None, *, certfile: str | None = None, keyfile: str | None = None
) -> ssl.SSLContext:
    """Verified TLS 1.2+; ``ca_file`` adds to the system trust store, never replaces checks;
    ``certfile``/``keyfile`` are a client certificate offered to the server."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    if certfile:
        context.load_cert_chain(certfile, keyfile or None)
    return context


def _tls_context_for(settings: ServerSettings) -> ssl.SSLContext:
    """The provider's TLS context; a CA file or client certificate that cannot be loaded is
    a configuration error (a retry cannot fix it), never a connection failure."""
    try:
        return build_tls_context(
            settings.ca_file, certfile=settings.client_certfile, keyfile=settings.client_keyfile
        )
    except (OSError, ssl.SSLError) as exc:
        raise SMTPFailure(
            f"the TLS certificate files could not be loaded: {exc}",
            outcome=Outcome.CONFIG_ERROR,
            provider_level=True,
        ) from exc


def _format_subject(cert: dict[str, Any] | None) -> str:
    if not cert:
        return ""
    parts = []
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            short = {"commonName": "CN", "organizationName": "O", "countryName": "C"}.get(key, key)
            parts.append(f"{short}={value}")
    return ", ".join(parts)


def _envelope_lines(
    envelope: Envelope, recipients: list[str], mail_params: list[str], rcpt_params: list[str]
) -> list[bytes]:
    """MAIL FROM and one RCPT TO per recipient, as they go on the wire."""
    encoding = "utf-8" if "SMTPUTF8" in mail_params else "ascii"
    mail = [b"MAIL", b"FROM:<" + envelope.sender.encode(encoding) + b">"]
    lines = [b" ".join([*mail, *(p.encode("ascii") for p in mail_params)])]
    for address in recipients:
        rcpt = [b"RCPT", b"TO:<" + address.encode(encoding) + b">"]
        lines.append(b" ".join([*rcpt, *(p.encode("ascii") for p in rcpt_params)]))
    return lines


def _check_commands(lines: list[bytes]) -> None:
    for line in lines:
        if _CONTROL_CHARACTERS.search(line):
            raise ValueError("command contains a prohibited control character")


def _needs_smtputf8(envelope: Envelope) -> bool:
    return not envelope.sender.isascii() or any(not r.isascii() for r in envelope.recipients)


def wire_format(data: bytes) -> bytes:
    """CRLF line endings and a final CRLF: the bytes exactly as DATA carries them."""
    if _is_wire_format(data):  # stored messages already are: skip the regex pass
        return data
    return normalize_message_line_endings(data)


def _is_wire_format(data: bytes) -> bool:
    crlf = data.count(b"\r\n")
    return data.endswith(b"\r\n") and data.count(b"\n") == crlf == data.count(b"\r")


def _dot_stuffed(data: bytes) -> bytes:
    # With CRLF line endings every line start follows "\r\n" (or is the first byte).
    data = wire_format(data).replace(b"\r\n.", b"\r\n..")
    return (b"." + data if data.startswith(b".") else data) + b".\r\n"


class _ConnectionUnusable(Exception):
    """The dialogue cannot go on for this message (RSET refused, the connection given up)."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class SMTPSession:
    """One connection to one provider; ``send()`` may be called for several messages."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        #: The credentials in every form they travelled, for every transcript and result of
        #: this connection (a server may echo them back in any later reply).
        self.secrets = Secrets([settings.password])
        self.transcript = self._new_transcript()
        self.smtp: RecordingSMTP | None = None
        self.capabilities = Capabilities()
        self.tls_version = ""
        self.tls_cipher = ""
        self.certificate_subject = ""
        self.peer_address = ""
        self.auth_mechanism = ""
        self.messages_sent = 0
        self.transactions = 0
        #: Where the dialogue is: what a failure is reported against.
        self.stage = Stage.GREETING
        #: A transaction was started and not finished: RSET before the next one.
        self._dirty = False
        self._before_body: Callable[[], Awaitable[None]] | None = None
        # True between writing a body and reading its final reply: a connection lost then
        # leaves the message's fate unknown.
        self._awaiting_final_reply = False
        #: Asked at a body for the message to send next on this connection, if any.
        self._lookahead: Callable[[], Envelope | None] | None = None
        #: The next message and its MAIL/RCPT/DATA lines, already written after a body.
        self._prefetched: tuple[Envelope, list[bytes]] | None = None

    def _new_transcript(self) -> Transcript:
        return Transcript(
            max_chars=self.settings.transcript_max_chars,
            enabled=self.settings.record_transcript,
            secrets=self.secrets,
        )

    @property
    def is_open(self) -> bool:
        return self.smtp is not None and self.smtp.is_connected

    @property
    def body_in_flight(self) -> bool:
        """A body was written and its final reply not read: the server may have it."""
        return self._awaiting_final_reply

    def can_take(self, max_messages: int) -> bool:
        """Whether another message may use this connection (ours and RFC 9422 MAILMAX)."""
        mail_max = self.capabilities.mail_max
        return (
            self.is_open
            and self.messages_sent < max_messages
            and (mail_max is None or self.transactions < mail_max)
        )

    # -- connection set-up ---------------------------------------------------------------

    async def open(self) -> None:
        """Connect, negotiate TLS, EHLO and AUTH. Raises :class:`SMTPFailure`, nothing else
        (but ``asyncio.CancelledError``)."""
        try:
            await self._open()
        except SMTPFailure:
            raise
        except MalformedReply as exc:
            self._close()
            # Garbage before any reply could be classified: the provider backs off.
            raise SMTPFailure(
                f"malformed reply to {self.stage.label}: {exc.reason}",
                outcome=Outcome.TRANSIENT_FAILURE,
                provider_level=True,
                received=exc.received,
            ) from exc
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            self._close()
            # Nothing about the message was said yet: the provider's failure. A server that
            # drops every connection at EHLO would otherwise use up every message's attempts.
            raise SMTPFailure(
                f"connection failed during set-up ({self.stage.label}): {exc}",
                outcome=Outcome.TRANSIENT_FAILURE,
                provider_level=True,
            ) from exc
        except Exception as exc:
            self._close()
            self.transcript.event(f"unexpected error at {self.stage.label}: {exc!r}")
            raise SMTPFailure(
                f"unexpected error during set-up ({self.stage.label}): {exc!r}",
                outcome=Outcome.TRANSIENT_FAILURE,
                provider_level=True,
            ) from exc

    async def _open(self) -> None:
        s = self.settings
        t = self.transcript
        implicit = s.tls == "implicit"
        tls_context = _tls_context_for(s) if s.tls != "none" else None
        smtp = RecordingSMTP(
            hostname=s.host,
            port=s.port,
            use_tls=implicit,
            start_tls=False,  # never aiosmtplib's silent opportunistic default
            tls_context=tls_context if implicit else None,
            timeout=s.timeout,
            local_hostname=s.local_hostname or _local_hostname(),
            transcript=t,
        )
        self.smtp = smtp
        t.event(f"connecting to {s.host}:{s.port} ({'implicit TLS' if implicit else 'plain'})")
        await self._greeting(smtp)
        if implicit:
            self._note_tls()
        await self._ehlo()
        if not implicit and s.tls in ("starttls", "opportunistic"):
            offered = self.capabilities.has("STARTTLS")
            if s.tls == "starttls" and not offered:
                why = (
                    "disabled for this provider"
                    if "STARTTLS" in self.capabilities.advertised
                    else "not offered by the server"
                )
                t.event(f"STARTTLS {why}; refusing to continue without TLS")
                raise SMTPFailure(
                    f"TLS policy is 'starttls' but STARTTLS is {why}; nothing was sent in clear",
                    outcome=Outcome.CONFIG_ERROR,
                    provider_level=True,
                )
            if offered:
                await self._starttls(tls_context)
        await self._authenticate()

    async def _greeting(self, smtp: RecordingSMTP) -> None:
        s = self.settings
        self.stage = Stage.GREETING
        try:
            greeting = await smtp.connect()
        except MalformedReply as exc:
            _log_malformed(self.transcript, exc)
            raise
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLCertVerificationError):
                raise self._certificate_failure(cause) from exc
            self.transcript.event(f"connection failed: {exc}")
            raise SMTPFailure(
                f"could not connect to {s.host}:{s.port}: {exc}",
                outcome=Outcome.TRANSIENT_FAILURE,
                provider_level=True,
            ) from exc
        self.peer_address = _peer(smtp)
        self.transcript.server(greeting.code, greeting.message)
        if not is_success(Stage.GREETING, greeting.code):
            if is_unexpected(Stage.GREETING, greeting.code):
                self._close()
            raise SMTPFailure(
                f"server greeting was not 220: {greeting.code} {greeting.message}",
                outcome=Outcome.TRANSIENT_FAILURE,
                provider_level=True,
                reply=Reply(greeting.code, greeting.message),
            )

    async def _ehlo(self) -> None:
        assert self.smtp is not None
        self.stage = Stage.EHLO
        response = await self.smtp.execute_command(b"EHLO", self._ehlo_name())
        if not is_success(Stage.EHLO, response.code):
            # RFC 5321 §3.2: fall back to HELO for servers without ESMTP.
            self.stage = Stage.HELO
            response = await self.smtp.execute_command(b"HELO", self._ehlo_name())
            if not is_success(Stage.HELO, response.code):
                raise SMTPFailure(
                    f"server refused EHLO and HELO: {response.code} {response.message}",
                    outcome=Outcome.TRANSIENT_FAILURE,
                    provider_level=True,
                    reply=Reply(response.code, response.message),
                )
            self.capabilities = Capabilities(disabled=self.settings.disable_extensions)
            return
        self.smtp.last_ehlo_response = response
        self.capabilities = Capabilities.from_ehlo(
            response.message, disabled=self.settings.disable_extensions
        )
        disabled_here = sorted(set(self.capabilities.advertised) & self.capabilities.disabled)
        if disabled_here:
            self.transcript.event(
                "extensions advertised but disabled for this provider: " + " ".join(disabled_here)
            )

    def _ehlo_name(self) -> bytes:
        assert self.smtp is not None
        return (self.smtp.local_hostname or "localhost").encode("ascii", "replace")

    async def _starttls(self, tls_context: ssl.SSLContext | None) -> None:
        assert self.smtp is not None
        self.stage = Stage.STARTTLS
        try:
            await self.smtp.starttls(tls_context=tls_context, server_hostname=self.settings.host)
        except ssl.SSLCertVerificationError as exc:
            raise self._certificate_failure(exc) from exc
        except MalformedReply:
            raise
        except aiosmtplib.SMTPResponseException as exc:
            raise SMTPFailure(
                f"STARTTLS refused: {exc.code} {exc.message}",
                outcome=Outcome.TRANSIENT_FAILURE,
                provider_level=True,
                reply=Reply(exc.code, exc.message),
            ) from exc
        except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
            self.transcript.event(f"TLS negotiation failed: {exc}")
            raise SMTPFailure(
                f"STARTTLS negotiation failed: {exc}",
                outcome=Outcome.TRANSIENT_FAILURE,
                provider_level=True,
            ) from exc
        self._note_tls()
        # RFC 3207 §4.2: forget the pre-TLS capabilities and ask again.
        await self._ehlo()

    def _certificate_failure(self, error: ssl.SSLCertVerificationError) -> SMTPFailure:
        # A certificate problem is not fixed by retrying the message: it waits, provider-wide.
        self.transcript.event(f"TLS certificate verification failed: {error.verify_message}")
        return SMTPFailure(
            f"TLS certificate of {self.settings.host} could not be verified: "
            f"{error.verify_message}",
            outcome=Outcome.CONFIG_ERROR,
            provider_level=True,
        )

    def _note_tls(self) -> None:
        transport = self.smtp.transport if self.smtp is not None else None
        if transport is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return
        self.tls_version = ssl_object.version() or ""
        cipher = ssl_object.cipher()
        self.tls_cipher = cipher[0] if cipher else ""
        self.certificate_subject = _format_subject(ssl_object.getpeercert())
        self.transcript.event(
            f"TLS established: {self.tls_version} {self.tls_cipher}; "
            f"certificate {self.certificate_subject or '(no subject)'}"
        )

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls_version)

    async def _authenticate(self) -> None:
        s = self.settings
        if not s.username:
            return
        self.stage = Stage.AUTH
        mechanism = self._auth_mechanism()
        try:
            if mechanism == "XOAUTH2":
                await self._auth_xoauth2()
            else:
                await self._auth_password(mechanism)
        except aiosmtplib.SMTPAuthenticationError as exc:
            reply = Reply(exc.code, exc.message)
            verdict = judge(Stage.AUTH, reply, s.reply_rules).verdict
            if is_unexpected(Stage.AUTH, exc.code):
                self._close()  # e.g. a 334 after the last step: the server still waits
            raise SMTPFailure(
                f"authentication with {mechanism} failed: {exc.code} {exc.message}",
                outcome=Outcome.CONFIG_ERROR
                if verdict in (Verdict.PERMANENT, Verdict.PROVIDER)
                else Outcome.TRANSIENT_FAILURE,
                provider_level=True,
                reply=reply,
            ) from exc
        self.auth_mechanism = mechanism
        self.transcript.event(f"authenticated with {mechanism}")

    def _auth_mechanism(self) -> str:
        """The first allowed mechanism the server offers; SMTPFailure when none can be used."""
        s = self.settings
        if not self.uses_tls and not s.allow_plaintext_auth:
            self.transcript.event("credentials withheld: the connection is not encrypted")
            raise SMTPFailure(
                "refusing to send credentials over an unencrypted connection "
                "(set ALLOW_PLAINTEXT_AUTH for this provider to permit it)",
                outcome=Outcome.CONFIG_ERROR,
                provider_level=True,
            )
        offered = self.capabilities.auth_mechanisms
        if not offered:
            raise SMTPFailure(
                "credentials are configured but the server offers no AUTH"
                + (" (disabled for this provider)" if "AUTH" in self.capabilities.disabled else ""),
                outcome=Outcome.CONFIG_ERROR,
                provider_level=True,
            )
        usable = [
            m
            for m in s.auth_mechanisms
            if m in offered and ((m == "XOAUTH2") == (s.oauth2_token is not None))
        ]
        if not usable:
            raise SMTPFailure(
                f"no common AUTH mechanism: the server offers {' '.join(offered)}, "
                f"the provider allows {' '.join(s.auth_mechanisms)}",
                outcome=Outcome.CONFIG_ERROR,
                provider_level=True,
            )
        return usable[0]

    async def _auth_password(self, mechanism: str) -> None:
        assert self.smtp is not None
        username, password = self.settings.username or "", self.settings.password or ""
        self.secrets.add(_password_encodings(username, password))
        method = {
            "PLAIN": self.smtp.auth_plain,
            "LOGIN": self.smtp.auth_login,
            "CRAM-MD5": self.smtp.auth_crammd5,
        }[mechanism]
        await method(username, password)

    async def _auth_xoauth2(self) -> None:
        assert self.smtp is not None and self.settings.oauth2_token is not None
        username = self.settings.username or ""
        for force_refresh in (False, True):
            token = await _call_token_provider(
                self.settings.oauth2_token, username=username, force_refresh=force_refresh
            )
            self.secrets.add([token, _xoauth2_payload(username, token)])
            try:
                await self.smtp.auth_xoauth2(username, token)
                return
            except aiosmtplib.SMTPAuthenticationError:
                # A token may expire between fetching and use: refresh it once.
                if force_refresh or not self.smtp.is_connected:
                    raise
                self.transcript.event("XOAUTH2 token refused; asking for a fresh token")

    # -- one message ----------------------------------------------------------------------

    def _new_result(self, envelope: Envelope) -> AttemptResult:
        return AttemptResult(
            host=self.settings.host,
            port=self.settings.port,
            peer_address=self.peer_address,
            tls_version=self.tls_version,
            tls_cipher=self.tls_cipher,
            certificate_subject=self.certificate_subject,
            auth_mechanism=self.auth_mechanism,
            extensions_advertised=self.capabilities.advertised_lines(),
            extensions_used=self.capabilities.effective_lines(),
        )

    async def send(
        self,
        envelope: Envelope,
        *,
        before_body: Callable[[], Awaitable[None]] | None = None,
        next_envelope: Callable[[], Envelope | None] | None = None,
    ) -> AttemptResult:
        """Send one message over the open connection; never raises for what the server or
        the network did (only ``asyncio.CancelledError`` and :class:`BodyStartNotRecorded`).

        ``before_body`` is awaited after the server's 354 and before the body is written:
        the last moment at which the message is certainly not delivered. ``next_envelope``
        is asked, when the body goes out, for the message this connection sends next: with
        PIPELINING its MAIL, RCPT and DATA follow the body in the same write, and the next
        ``send()`` must be for that envelope.
        """
        self._before_body = before_body
        self._lookahead = next_envelope
        self._awaiting_final_reply = False
        if self.messages_sent:
            self.transcript = self._new_transcript()
            self.transcript.event(f"reusing connection (message {self.messages_sent + 1})")
            if self.smtp is not None:
                self.smtp.transcript = self.transcript
        result = self._new_result(envelope)
        self.messages_sent += 1
        try:
            await self._transactions(envelope, result)
        except BodyStartNotRecorded:
            raise  # the connection is closed already; the caller must stop sending
        except asyncio.CancelledError:
            self.abandon("cancelled")
            raise
        except Exception as exc:
            self._record_failure(result, exc)
        return finish(result, self.transcript)

    async def _reset(self) -> None:
        assert self.smtp is not None
        self.stage = Stage.RSET
        response = await self.smtp.execute_command(b"RSET")
        if not is_success(Stage.RSET, response.code):
            self.abandon(f"RSET was answered {response.code}")
            raise _ConnectionUnusable(
                f"the connection could not be reset: {response.code} {response.message}",
                Reply(response.code, response.message),
            )
        self._dirty = False

    async def _transactions(self, envelope: Envelope, result: AttemptResult) -> None:
        pending = list(dict.fromkeys(envelope.recipients))
        local_problem = self._local_refusal(envelope, len(pending))
        if local_problem:
            self.transcript.event(f"not sent: {local_problem}")
            result.error = local_problem
            for address in pending:
                result.recipients[address] = RecipientResult(
                    address, "rejected", text=local_problem, stage="local"
                )
            result.outcome = Outcome.PERMANENT_FAILURE
            return
        mail_params, rcpt_params = self._parameters(envelope)
        result.mail_parameters = mail_params
        result.rcpt_parameters = rcpt_params
        for address in pending:
            result.recipients[address] = RecipientResult(address, "pending")
        chunk_size = self._recipients_per_transaction() or max(len(pending), 1)
        chunks = [pending[i : i + chunk_size] for i in range(0, len(pending), chunk_size)]
        for index, chunk in enumerate(chunks):
            if not self.is_open:
                raise _ConnectionUnusable("the connection was closed before all recipients")
            if self._dirty:
                await self._reset()
            await self._transaction(
                envelope,
                chunk,
                mail_params,
                rcpt_params,
                result,
                last=index == len(chunks) - 1,
            )
        self._conclude(result)

    def _conclude(self, result: AttemptResult) -> None:
        result.outcome = combine_outcome(r.state for r in result.recipients.values())
        if not result.error and result.outcome != Outcome.ACCEPTED:
            failed = [r for r in result.recipients.values() if r.state != "accepted"]
            result.error = "; ".join(f"{r.address}: {r.code} {r.text}" for r in failed)

    def _record_failure(self, result: AttemptResult, exc: Exception) -> None:
        """The dialogue broke off during this message: each recipient without a verdict is
        ``unknown`` if its body may have reached the server, else deferred."""
        stage = self.stage
        code, text = None, str(exc)
        if isinstance(exc, MalformedReply):
            error = f"malformed reply to {stage.label}: {exc.reason}"
            text = result.reply_text = exc.received
            result.reply_code = None
        elif isinstance(exc, _ConnectionUnusable):
            error = str(exc)
            if exc.reply is not None:
                code, text = exc.reply.code, exc.reply.text
                result.reply_code, result.reply_text = code, text
        elif isinstance(exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPTimeoutError):
            error = f"connection failed at {stage.label}: {exc}"
        elif isinstance(exc, OSError):
            error = f"connection failed at {stage.label}: {exc}"
        else:
            error = f"unexpected error at {stage.label}: {exc!r}"
            self.transcript.event(error)
        state = "unknown" if self._awaiting_final_reply else "deferred"
        if state == "unknown":
            self.transcript.event(
                "no final reply after the message body was sent: the server may have it"
            )
        for address, recipient in result.recipients.items():
            if recipient.state == "pending":
                result.recipients[address] = RecipientResult(
                    address, state, code, text, stage.value
                )
        result.error = error
        self._awaiting_final_reply = False
        self.abandon("the dialogue broke off")
        self._conclude(result)

    def _recipients_per_transaction(self) -> int | None:
        """The server's RCPTMAX or our MAX_RECIPIENTS, whichever is lower (None: no limit)."""
        limits = [n for n in (self.capabilities.rcpt_max, self.settings.max_recipients) if n]
        return min(limits) if limits else None

    def _local_refusal(self, envelope: Envelope, recipient_count: int) -> str:
        """Why this message cannot go through this connection at all (before MAIL)."""
        caps = self.capabilities
        if recipient_count == 0:
            return "the message has no recipients"
        if any(_CONTROL_TEXT.search(a) for a in (envelope.sender, *envelope.recipients)):
            return "an address contains a control character"
        limit = caps.size_limit
        if limit is not None and len(envelope.data) > limit:
            return f"message is {len(envelope.data)} bytes; the server accepts at most {limit}"
        if _needs_smtputf8(envelope) and not caps.has("SMTPUTF8"):
            return "an address is not ASCII and SMTPUTF8 is not available" + (
                " (disabled for this provider)" if "SMTPUTF8" in caps.disabled else ""
            )
        if envelope.require_tls:
            if "REQUIRETLS" in caps.disabled:
                return (
                    "the message requires REQUIRETLS (RFC 8689) but this provider disables it "
                    "(DISABLE_EXTENSIONS); choose a provider that honours it"
                )
            if not caps.has("REQUIRETLS"):
                return "the message requires REQUIRETLS (RFC 8689) but the server does not offer it"
            if not self.uses_tls:
                return "the message requires REQUIRETLS but the connection is not encrypted"
        return ""

    def _parameters(
        self, envelope: Envelope, *, quiet: bool = False
    ) -> tuple[list[str], list[str]]:
        """MAIL and RCPT parameters; ``quiet`` leaves the notes to the message's own send."""
        note = (lambda text: None) if quiet else self.transcript.event
        caps = self.capabilities
        mail: list[str] = []
        rcpt: list[str] = []
        if caps.has("SIZE"):
            mail.append(f"SIZE={len(envelope.data)}")
        if not envelope.data.isascii():
            if caps.has("8BITMIME"):
                mail.append("BODY=8BITMIME")
            else:
                note("8-bit body sent without BODY=8BITMIME (not in effect)")
        if _needs_smtputf8(envelope):
            mail.append("SMTPUTF8")
        wants_dsn = bool(envelope.dsn_notify or envelope.dsn_ret or envelope.dsn_envid)
        if wants_dsn and caps.has("DSN"):
            if envelope.dsn_ret:
                mail.append(f"RET={envelope.dsn_ret}")
            if envelope.dsn_envid:
                mail.append(f"ENVID={_xtext(envelope.dsn_envid)}")
            if envelope.dsn_notify:
                rcpt.append("NOTIFY=" + ",".join(envelope.dsn_notify))
        elif wants_dsn:
            note("DSN requested but not in effect; sent without DSN parameters")
        if envelope.require_tls:
            # RFC 8689 §4.1: only because the message asked for it, never because advertised.
            mail.append("REQUIRETLS")
        return mail, rcpt

    async def _transaction(
        self,
        envelope: Envelope,
        recipients: list[str],
        mail_params: list[str],
        rcpt_params: list[str],
        result: AttemptResult,
        *,
        last: bool = True,
    ) -> None:
        self.transactions += 1
        lines = _envelope_lines(envelope, recipients, mail_params, rcpt_params)
        self._dirty = True
        mail, rcpts, start = await self._envelope_replies(envelope, lines)
        accepted = self._judge_envelope(recipients, mail, rcpts, result)
        if start is None:
            return  # DATA was not sent
        if not accepted:
            if is_success(Stage.DATA, start.code) or is_unexpected(Stage.DATA, start.code):
                # The server waits for a body although nothing may be delivered: a "." would
                # complete an empty message. Closing aborts the transaction (RFC 5321 §3.8).
                self.abandon(f"DATA was answered {start.code} with no recipient accepted")
            return
        if not is_success(Stage.DATA, start.code):
            self._fail(accepted, result, Reply(start.code, start.message), Stage.DATA)
            return
        await self._data(envelope, accepted, result, last=last)

    async def _envelope_replies(
        self, envelope: Envelope, lines: list[bytes]
    ) -> tuple[SMTPResponse, list[SMTPResponse], SMTPResponse | None]:
        """The replies to MAIL, each RCPT and DATA (None when DATA was not sent)."""
        commands = [*lines, b"DATA"]
        stages = [Stage.MAIL, *([Stage.RCPT] * (len(lines) - 1)), Stage.DATA]
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None:
            # Written after the previous message's body; only the replies are left to read.
            if prefetched != (envelope, commands):
                raise RuntimeError("the pipelined commands were written for another message")
            self.transcript.event(
                "MAIL, RCPT and DATA went out with the previous message's body (PIPELINING)"
            )
            replies = await self._pipeline(commands, stages, written=True)
        elif self.capabilities.has("PIPELINING"):
            # RFC 2920: MAIL, every RCPT and DATA in one write, then their replies in order.
            replies = await self._pipeline(commands, stages)
        else:
            return await self._sequential_envelope(lines)
        return replies[0], replies[1:-1], replies[-1]

    async def _sequential_envelope(
        self, lines: list[bytes]
    ) -> tuple[SMTPResponse, list[SMTPResponse], SMTPResponse | None]:
        """MAIL, each RCPT, DATA: one round trip each; DATA only if the envelope went well."""
        mail_line, *rcpt_lines = lines
        mail = await self._command(Stage.MAIL, mail_line)
        if not is_success(Stage.MAIL, mail.code):
            return mail, [], None
        rcpts = [await self._command(Stage.RCPT, line) for line in rcpt_lines]
        if not any(is_success(Stage.RCPT, r.code) for r in rcpts) or any(
            is_unexpected(Stage.RCPT, r.code) for r in rcpts
        ):
            return mail, rcpts, None
        return mail, rcpts, await self._command(Stage.DATA, b"DATA")

    async def _command(self, stage: Stage, line: bytes) -> SMTPResponse:
        assert self.smtp is not None
        self.stage = stage
        return await self.smtp.execute_command(*line.split(b" "))

    def _judge_envelope(
        self,
        recipients: list[str],
        mail: SMTPResponse,
        rcpts: list[SMTPResponse],
        result: AttemptResult,
    ) -> list[str]:
        """The recipients the server accepted, once the others have their verdicts; none
        when the transaction cannot go on."""
        if not is_success(Stage.MAIL, mail.code):
            # Pipelined RCPT/DATA replies after a refused MAIL only say "need MAIL first".
            self._fail(recipients, result, Reply(mail.code, mail.message), Stage.MAIL)
            return []
        accepted: list[str] = []
        unexpected: Reply | None = None
        for address, reply in zip(recipients, rcpts, strict=True):
            if is_success(Stage.RCPT, reply.code):
                accepted.append(address)
                result.recipients[address] = RecipientResult(
                    address, "pending", reply.code, reply.message, Stage.RCPT.value
                )
                continue
            self._fail([address], result, Reply(reply.code, reply.message), Stage.RCPT)
            if unexpected is None and is_unexpected(Stage.RCPT, reply.code):
                unexpected = Reply(reply.code, reply.message)
        if unexpected is not None:
            # What the server made of this envelope is unknown: nothing goes in it, and the
            # recipients it did accept wait for the next attempt.
            for address in accepted:
                result.recipients[address] = RecipientResult(
                    address, "deferred", unexpected.code, unexpected.text, Stage.RCPT.value
                )
            return []
        return accepted

    async def _data(
        self, envelope: Envelope, accepted: list[str], result: AttemptResult, *, last: bool
    ) -> None:
        """After the 354: mark the body as started, send it, judge the final reply."""
        if self._before_body is not None:
            try:
                await self._before_body()
            except asyncio.CancelledError:
                self.abandon("cancelled before the body")
                raise
            except Exception as exc:
                self.abandon("the body could not be marked as started; it was not sent")
                raise BodyStartNotRecorded(
                    f"marking the body as started failed, so it was not sent: {exc!r}"
                ) from exc
        following = self._next_in_pipeline() if last else None
        self.stage = Stage.END_OF_DATA
        final = await self._send_body(envelope.data, result, following)
        self._dirty = False  # the final reply ends the transaction, whatever it says
        reply = Reply(final.code, final.message)
        if not is_success(Stage.END_OF_DATA, final.code):
            self._fail(accepted, result, reply, Stage.END_OF_DATA)
            if is_unexpected(Stage.END_OF_DATA, final.code):
                # A positive reply other than 250 to a whole body: no success, but the
                # server may have taken the message, so a retry is a possible duplicate.
                for address in accepted:
                    result.recipients[address].state = "unknown"
            return
        result.reply_code, result.reply_text = final.code, final.message
        for address in accepted:
            result.recipients[address] = RecipientResult(
                address, "accepted", final.code, final.message, Stage.END_OF_DATA.value
            )

    async def _pipeline(
        self, lines: list[bytes], stages: list[Stage], *, written: bool = False
    ) -> list[SMTPResponse]:
        """Write ``lines`` at once (unless ``written`` already) and read one reply each."""
        assert self.smtp is not None
        protocol = self.smtp.strict_protocol
        _check_commands(lines)
        async with protocol.exchange():
            if not written:
                protocol.refuse_unasked_data()
                protocol.write(b"".join(line + b"\r\n" for line in lines))
            for line in lines:
                self.transcript.client(line.decode("utf-8", "replace"))
            replies = []
            for stage in stages:
                self.stage = stage
                replies.append(await self._read_reply(protocol, "a reply"))
        return replies

    async def _read_reply(self, protocol: ReplyKeepingProtocol, waiting_for: str) -> SMTPResponse:
        try:
            reply = await protocol.next_reply(self.settings.timeout)
        except MalformedReply as exc:
            _log_malformed(self.transcript, exc)
            raise
        except aiosmtplib.SMTPTimeoutError:
            self.transcript.event(f"timed out waiting for {waiting_for}")
            raise
        except aiosmtplib.SMTPServerDisconnected:
            self.transcript.event("connection lost")
            raise
        self.transcript.server(reply.code, reply.message)
        return reply

    def _fail(
        self, addresses: list[str], result: AttemptResult, reply: Reply, stage: Stage
    ) -> None:
        """``reply`` (not the stage's success) is the verdict for ``addresses``."""
        classification = judge(stage, reply, self.settings.reply_rules)
        # A failure is never an acceptance, whatever a rule says.
        state = "rejected" if classification.verdict == Verdict.PERMANENT else "deferred"
        if classification.verdict == Verdict.PROVIDER:
            result.provider_level = True
        if classification.rule is not None and (
            classification.rule.pause_provider or classification.verdict == Verdict.PROVIDER
        ):
            result.pause_provider = True
            result.pause_reason = classification.rule.description or str(reply)
        if classification.retry_after_seconds is not None:
            result.retry_after_seconds = classification.retry_after_seconds
        if result.reply_code is None or stage != Stage.RCPT:
            result.reply_code, result.reply_text = reply.code, reply.text
        for address in addresses:
            result.recipients[address] = RecipientResult(
                address, state, reply.code, reply.text, stage.value
            )
        if is_unexpected(stage, reply.code):
            self.abandon(f"{stage.label} was answered {reply.code}, which it never is")

    def _next_in_pipeline(self) -> tuple[Envelope, list[bytes]] | None:
        """The next message's MAIL, RCPT and DATA, to follow this body (RFC 2920 §3.1: the
        message content may start a group of commands), or None."""
        if self._lookahead is None or not self.capabilities.has("PIPELINING"):
            return None
        following = self._lookahead()
        if following is None:
            return None
        recipients = list(dict.fromkeys(following.recipients))
        most = self._recipients_per_transaction()
        if self._local_refusal(following, len(recipients)) or (most and len(recipients) > most):
            return None  # it goes the ordinary way, in its own turn
        mail_params, rcpt_params = self._parameters(following, quiet=True)
        try:
            lines = [*_envelope_lines(following, recipients, mail_params, rcpt_params), b"DATA"]
            _check_commands(lines)
        except ValueError:
            return None  # its own send() will say why
        return following, lines

    async def _send_body(
        self,
        data: bytes,
        result: AttemptResult,
        following: tuple[Envelope, list[bytes]] | None = None,
    ) -> SMTPResponse:
        """Write the dot-stuffed body (and any ``following`` commands) and read the final reply.

        aiosmtplib's ``data()`` hides whether the body had been written when a connection
        dies; we need that line (it separates ``transient`` from ``unknown``), so this does
        the second half of its DATA exchange with the same protocol calls.
        """
        assert self.smtp is not None
        protocol = self.smtp.strict_protocol  # the server may have gone after its 354
        payload = _dot_stuffed(data)
        self.transcript.body(data)
        if following is not None:
            self.transcript.event("the next message's MAIL, RCPT and DATA follow (PIPELINING)")
            payload += b"".join(line + b"\r\n" for line in following[1])
        async with protocol.exchange(keep_listening=following is not None):
            protocol.refuse_unasked_data()
            protocol.write(payload)
            result.body_sent = True
            self._awaiting_final_reply = True
            self._prefetched = following
            final = await self._read_reply(protocol, "the final reply")
        self._awaiting_final_reply = False
        return final

    # -- closing --------------------------------------------------------------------------

    def abandon(self, reason: str) -> None:
        """Close at once, without QUIT: the server's state is not what we think, or it is
        inside a transaction that must not complete (RFC 5321 §3.8: closing aborts it)."""
        if self.is_open:
            self.transcript.event(f"closing the connection without QUIT: {reason}")
        self._prefetched = None
        self._close()

    async def close(self) -> None:
        """QUIT if the dialogue allows it, then close; never raises (but cancellation)."""
        try:
            await self._quit()
        except Exception:  # the connection goes anyway
            pass
        self._close()
        # Let the transport finish closing (a TLS shutdown takes a loop turn or two) before
        # the event loop goes away, or the socket is left for the garbage collector.
        if self.smtp is not None and self.peer_address:
            try:
                await asyncio.wait_for(self.smtp.connection_gone.wait(), timeout=1)
            except TimeoutError:
                pass

    async def _quit(self) -> None:
        if self.smtp is None or not self.smtp.is_connected:
            return
        if self._prefetched is not None:
            # The server is inside the next transaction's DATA: a QUIT would be read as
            # message text. Dropping the connection aborts that transaction (RFC 5321 §3.8).
            self.transcript.event("closed without QUIT: a pipelined transaction was not used")
            self._prefetched = None
            return
        self.stage = Stage.QUIT
        await asyncio.wait_for(self.smtp.quit(), timeout=min(self.settings.timeout, 5))

    def _close(self) -> None:
        if self.smtp is not None:
            self.smtp.close()


def failure_result(session: SMTPSession, envelope: Envelope, failure: SMTPFailure) -> AttemptResult:
    """The attempt record of a message whose connection could not be set up (or whose
    session failed in a way it could not record itself)."""
    result = session._new_result(envelope)
    result.outcome = failure.outcome
    result.provider_level = failure.provider_level
    result.error = str(failure)
    if failure.reply is not None:
        result.reply_code, result.reply_text = failure.reply.code, failure.reply.text
    else:
        result.reply_text = failure.received
    for address in dict.fromkeys(envelope.recipients):
        result.recipients[address] = RecipientResult(
            address, "deferred", result.reply_code, str(failure), session.stage.value
        )
    return finish(result, session.transcript)


async def deliver(settings: ServerSettings, envelope: Envelope) -> AttemptResult:
    """Open a connection, send one message, close. Raises only ``asyncio.CancelledError``
    and, from ``send()``, :class:`BodyStartNotRecorded` (which needs a ``before_body``)."""
    session = SMTPSession(settings)
    try:
        await session.open()
    except SMTPFailure as failure:
        await session.close()
        return failure_result(session, envelope, failure)
    try:
        result = await session.send(envelope)
    finally:
        await session.close()
    result.transcript = session.transcript.render()  # with the QUIT
    return result


# -- helpers -------------------------------------------------------------------------------


def _local_hostname() -> str:
    # gethostname, not getfqdn: no DNS lookup on the sending path.
    name = socket.gethostname()
    return name if name.isascii() and name else "localhost"


def _peer(smtp: aiosmtplib.SMTP) -> str:
    try:
        peer = smtp.get_transport_info("peername")
    except aiosmtplib.SMTPServerDisconnected:
        return ""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "")


def _xtext(value: str) -> str:
    """RFC 3461 §4: xtext-encode ENVID."""
    out = []
    for char in value:
        code = ord(char)
        if 33 <= code <= 126 and char not in "+=":
            out.append(char)
        else:
            out.append(f"+{code:02X}")
    return "".join(out)


def _password_encodings(username: str, password: str) -> list[str]:
    """The forms in which a password travels during AUTH, for the transcript scrubber."""
    if not password:
        return []
    plain = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    return [password, plain, base64.b64encode(password.encode()).decode()]


def _xoauth2_payload(username: str, token: str) -> str:
    raw = f"user={username}\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(raw.encode()).decode()


async def _call_token_provider(
    provider: TokenProvider, *, username: str, force_refresh: bool
) -> str:
    try:
        token = provider(username=username, force_refresh=force_refresh)
        if inspect.isawaitable(token):
            token = await token
    except Exception as exc:  # the project's own code: a configuration matter
        raise SMTPFailure(
            f"the OAuth2 token provider failed: {exc!r}",
            outcome=Outcome.CONFIG_ERROR,
            provider_level=True,
        ) from exc
    if not isinstance(token, str) or not token:
        raise SMTPFailure(
            "the OAuth2 token provider returned no token",
            outcome=Outcome.CONFIG_ERROR,
            provider_level=True,
        )
    return token
