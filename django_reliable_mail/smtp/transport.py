"""The SMTP dialogue, recorded: connect, TLS, EHLO, AUTH, then MAIL/RCPT/DATA per message.

aiosmtplib does the I/O. We drive every command ourselves instead of using its
``sendmail()`` so that each MAIL FROM parameter comes from the *effective* capabilities
only (see ``capabilities.py``), every reply is kept per recipient, and the moment the body
has been handed to the socket is known exactly: a connection that dies after that point
may have delivered the mail, which is the ``unknown`` outcome.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib
from aiosmtplib import SMTPResponse
from aiosmtplib.protocol import SMTPProtocol, normalize_message_line_endings

from .capabilities import SUPPORTED_AUTH_MECHANISMS, Capabilities
from .classify import (
    Outcome,
    Reply,
    ReplyRule,
    Verdict,
    classify_reply,
    combine_outcome,
    parse_enhanced_code,
    parse_queue_id,
)
from .transcript import REDACTED, Transcript

TLS_MODES = ("implicit", "starttls", "opportunistic", "none")
_CONTROL_CHARACTERS = re.compile(rb"[\x00-\x1f\x7f]")

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


@dataclass
class RecipientResult:
    address: str
    #: accepted | deferred | rejected | unknown
    state: str
    code: int | None = None
    text: str = ""
    stage: str = ""

    @property
    def enhanced_code(self) -> str:
        return parse_enhanced_code(self.text)[0]

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "code": self.code,
            "enhanced_code": self.enhanced_code,
            "text": self.text,
            "stage": self.stage,
        }


@dataclass
class AttemptResult:
    """What one delivery attempt of one message did, ready to be stored."""

    outcome: Outcome = Outcome.TRANSIENT_FAILURE
    host: str = ""
    port: int = 0
    peer_address: str = ""
    tls_version: str = ""
    tls_cipher: str = ""
    certificate_subject: str = ""
    auth_mechanism: str = ""
    extensions_advertised: list[str] = field(default_factory=list)
    extensions_used: list[str] = field(default_factory=list)
    mail_parameters: list[str] = field(default_factory=list)
    rcpt_parameters: list[str] = field(default_factory=list)
    recipients: dict[str, RecipientResult] = field(default_factory=dict)
    reply_code: int | None = None
    reply_text: str = ""
    queue_id: str = ""
    error: str = ""
    #: The failure is the provider's, not the message's: do not count it against the message.
    provider_level: bool = False
    #: A reply rule asked to pause the provider although this message's outcome stands.
    pause_provider: bool = False
    #: Why, for the provider's status (the rule's description, else the reply).
    pause_reason: str = ""
    retry_after_seconds: int | None = None
    body_sent: bool = False
    transcript: str = ""
    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0

    @property
    def reply_enhanced_code(self) -> str:
        return parse_enhanced_code(self.reply_text)[0]


class SMTPFailure(Exception):
    """A failure that ends the connection set-up; carries how to classify it."""

    def __init__(
        self,
        message: str,
        *,
        outcome: Outcome,
        provider_level: bool,
        reply: Reply | None = None,
    ) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.provider_level = provider_level
        self.reply = reply


class ReplyKeepingProtocol(SMTPProtocol):
    """aiosmtplib's protocol, keeping replies that arrive while an earlier one waits.

    aiosmtplib drops data that arrives while a parsed reply is still waiting to be picked
    up. With pipelining (RFC 2920) the next reply can arrive in exactly that moment (a
    finished read reaches its reader through two turns of the event loop), and a dropped
    reply turns into a timeout. Such data is kept in the buffer instead, and the next read
    takes its reply from there.
    """

    def data_received(self, data: bytes) -> None:
        waiter = self._response_waiter
        if waiter is not None and waiter.done() and self._response_pending:
            self._buffer.extend(data)
            return
        super().data_received(data)

    async def read_response(self, timeout: float | None = None) -> SMTPResponse:
        waiter = self._response_waiter
        if waiter is not None and not waiter.done() and self._buffer:
            parsed = self._read_response_from_buffer()
            if parsed is not None:
                waiter.set_result(parsed)
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


class RecordingSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client with every command and reply written to a transcript."""

    def __init__(self, *args: Any, transcript: Transcript, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transcript = transcript
        self._auth_exchange = False
        #: Set once the socket is really gone, so callers can wait for TLS teardown.
        self.connection_gone = asyncio.Event()

    async def connect(self, **kwargs: Any) -> SMTPResponse:
        response = await super().connect(**kwargs)
        if self.protocol is not None and type(self.protocol) is SMTPProtocol:
            # aiosmtplib builds its protocol inside connect() and offers no hook for it.
            self.protocol.__class__ = ReplyKeepingProtocol
        return response

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
        if verb == b"AUTH" or self._auth_exchange:
            # RFC 4954: 334 challenges (and the answers to them) carry credentials.
            self._auth_exchange = response.code == 334
            if response.code == 334:
                self.transcript.server(334, REDACTED)
                return response
        self.transcript.server(response.code, response.message)
        return response

    async def starttls(self, **kwargs: Any) -> SMTPResponse:  # type: ignore[override]
        self.transcript.client("STARTTLS")
        try:
            response = await super().starttls(**kwargs)
        except aiosmtplib.SMTPResponseException as exc:
            self.transcript.server(exc.code, exc.message)
            raise
        self.transcript.server(response.code, response.message)
        return response


def build_tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verified TLS 1.2+; ``ca_file`` adds to the system trust store, never replaces checks."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


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


class SMTPSession:
    """One connection to one provider; ``send()`` may be called for several messages."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
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
        transcript = Transcript(
            max_chars=self.settings.transcript_max_chars,
            enabled=self.settings.record_transcript,
        )
        transcript.add_secrets([self.settings.password])
        return transcript

    @property
    def is_open(self) -> bool:
        return self.smtp is not None and self.smtp.is_connected

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
        """Connect, negotiate TLS, EHLO and AUTH. Raises :class:`SMTPFailure`."""
        s = self.settings
        t = self.transcript
        implicit = s.tls == "implicit"
        tls_context = build_tls_context(s.ca_file) if s.tls != "none" else None
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
        try:
            greeting = await smtp.connect()
        except aiosmtplib.SMTPConnectResponseError as exc:
            t.server(exc.code, exc.message)
            raise SMTPFailure(
                f"server greeting was not 220: {exc.code} {exc.message}",
                outcome=Outcome.TRANSIENT_FAILURE,
                provider_level=True,
                reply=Reply(exc.code, exc.message),
            ) from exc
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLCertVerificationError):
                raise self._certificate_failure(cause) from exc
            t.event(f"connection failed: {exc}")
            raise SMTPFailure(
                f"could not connect to {s.host}:{s.port}: {exc}",
                outcome=Outcome.TRANSIENT_FAILURE,
                provider_level=True,
            ) from exc
        self.peer_address = _peer(smtp)
        t.server(greeting.code, greeting.message)
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

    async def _ehlo(self) -> None:
        assert self.smtp is not None
        response = await self._guarded(self.smtp.execute_command(b"EHLO", self._ehlo_name()))
        if response.code != 250:
            # RFC 5321 §3.2: fall back to HELO for servers without ESMTP.
            response = await self._guarded(self.smtp.execute_command(b"HELO", self._ehlo_name()))
            if response.code != 250:
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
        try:
            await self.smtp.starttls(tls_context=tls_context, server_hostname=self.settings.host)
        except ssl.SSLCertVerificationError as exc:
            raise self._certificate_failure(exc) from exc
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
        assert self.smtp is not None and self.smtp.transport is not None
        ssl_object = self.smtp.transport.get_extra_info("ssl_object")
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
        assert self.smtp is not None
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
        mechanism = usable[0]
        try:
            if mechanism == "XOAUTH2":
                await self._auth_xoauth2()
            else:
                self.transcript.add_secrets(_password_encodings(s.username, s.password or ""))
                method = {
                    "PLAIN": self.smtp.auth_plain,
                    "LOGIN": self.smtp.auth_login,
                    "CRAM-MD5": self.smtp.auth_crammd5,
                }[mechanism]
                await self._guarded(method(s.username, s.password or ""))
        except aiosmtplib.SMTPAuthenticationError as exc:
            reply = Reply(exc.code, exc.message)
            verdict = classify_reply(reply, s.reply_rules).verdict
            raise SMTPFailure(
                f"authentication with {mechanism} failed: {exc.code} {exc.message}",
                outcome=Outcome.TRANSIENT_FAILURE
                if verdict == Verdict.TRANSIENT
                else Outcome.CONFIG_ERROR,
                provider_level=True,
                reply=reply,
            ) from exc
        self.auth_mechanism = mechanism
        self.transcript.event(f"authenticated with {mechanism}")

    async def _auth_xoauth2(self) -> None:
        assert self.smtp is not None and self.settings.oauth2_token is not None
        username = self.settings.username or ""
        for force_refresh in (False, True):
            token = await _call_token_provider(
                self.settings.oauth2_token, username=username, force_refresh=force_refresh
            )
            self.transcript.add_secrets([token, _xoauth2_payload(username, token)])
            try:
                await self._guarded(self.smtp.auth_xoauth2(username, token))
                return
            except aiosmtplib.SMTPAuthenticationError:
                # A token may expire between fetching and use: refresh it once.
                if force_refresh or not self.smtp.is_connected:
                    raise
                self.transcript.event("XOAUTH2 token refused; asking for a fresh token")

    async def _guarded(self, awaitable: Awaitable[Any]) -> Any:
        """Run a set-up command; connection errors become a classified SMTPFailure."""
        try:
            return await awaitable
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            raise SMTPFailure(
                f"connection failed during set-up: {exc}",
                outcome=Outcome.TRANSIENT_FAILURE,
                provider_level=False,
            ) from exc

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
        """Send one message over the open connection; never raises for SMTP outcomes.

        ``before_body`` is awaited after the server's 354 and before the body is written:
        the last moment at which the message is certainly not delivered. ``next_envelope``
        is asked, when the body goes out, for the message this connection sends next: with
        PIPELINING its MAIL, RCPT and DATA follow the body in the same write, and the next
        ``send()`` must be for that envelope.
        """
        self._before_body = before_body
        self._lookahead = next_envelope
        result = self._new_result(envelope)
        if self.messages_sent:
            self.transcript = self._new_transcript()
            self.transcript.event(f"reusing connection (message {self.messages_sent + 1})")
            assert self.smtp is not None
            self.smtp.transcript = self.transcript
            if self._dirty:
                await self._reset()
        self.messages_sent += 1
        try:
            await self._transactions(envelope, result)
        finally:
            result.finished_at = time.time()
            result.transcript = self.transcript.render()
        return result

    async def _reset(self) -> None:
        assert self.smtp is not None
        try:
            await self.smtp.execute_command(b"RSET")
            self._dirty = False
        except (aiosmtplib.SMTPException, OSError):
            pass

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
        chunk_size = self._recipients_per_transaction() or max(len(pending), 1)
        chunks = [pending[i : i + chunk_size] for i in range(0, len(pending), chunk_size)]
        try:
            for chunk in chunks:
                if self._dirty:
                    await self._reset()
                await self._transaction(
                    envelope, chunk, mail_params, rcpt_params, result, last=chunk is chunks[-1]
                )
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            state = "unknown" if self._awaiting_final_reply else "deferred"
            if state == "unknown":
                self.transcript.event(
                    "connection lost after the message body was sent: the server may have it"
                )
            result.error = f"connection failed: {exc}"
            for address in pending:
                if address not in result.recipients or result.recipients[address].state in (
                    "pending",
                ):
                    result.recipients[address] = RecipientResult(
                        address,
                        state,
                        text=str(exc),
                        stage="data" if state == "unknown" else "conn",
                    )
            self._close()
        outcome = combine_outcome(r.state for r in result.recipients.values())
        result.outcome = outcome
        if not result.error and outcome not in (Outcome.ACCEPTED,):
            failed = [r for r in result.recipients.values() if r.state != "accepted"]
            result.error = "; ".join(f"{r.address}: {r.code} {r.text}" for r in failed)[:2000]

    def _recipients_per_transaction(self) -> int | None:
        """The server's RCPTMAX or our MAX_RECIPIENTS, whichever is lower (None: no limit)."""
        limits = [n for n in (self.capabilities.rcpt_max, self.settings.max_recipients) if n]
        return min(limits) if limits else None

    def _local_refusal(self, envelope: Envelope, recipient_count: int) -> str:
        """Why this message cannot go through this connection at all (before MAIL)."""
        caps = self.capabilities
        if recipient_count == 0:
            return "the message has no recipients"
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
        assert self.smtp is not None
        rules = self.settings.reply_rules
        for address in recipients:
            result.recipients[address] = RecipientResult(address, "pending")
        self.transactions += 1
        mail_line, *rcpt_lines = _envelope_lines(envelope, recipients, mail_params, rcpt_params)
        self._dirty = True
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None:
            # Written after the previous message's body; only the replies are left to read.
            assert prefetched == (envelope, [mail_line, *rcpt_lines, b"DATA"])
            self.transcript.event(
                "MAIL, RCPT and DATA went out with the previous message's body (PIPELINING)"
            )
            replies = await self._pipeline(prefetched[1], written=True)
            mail, rcpts, start = replies[0], replies[1:-1], replies[-1]
        elif self.capabilities.has("PIPELINING"):
            mail, rcpts, start = await self._pipelined_envelope(mail_line, rcpt_lines)
        else:
            mail, rcpts, start = await self._sequential_envelope(mail_line, rcpt_lines)

        if mail.code != 250:
            # Pipelined RCPT/DATA replies after a refused MAIL only say "need MAIL first".
            self._fail_all(recipients, result, Reply(mail.code, mail.message), "mail", rules)
            return
        accepted: list[str] = []
        for address, reply in zip(recipients, rcpts, strict=True):
            if reply.code in (250, 251):
                accepted.append(address)
                result.recipients[address] = RecipientResult(
                    address, "pending", reply.code, reply.message, "rcpt"
                )
            else:
                self._fail_all([address], result, Reply(reply.code, reply.message), "rcpt", rules)
        if not accepted:
            return
        assert start is not None
        if start.code != 354:
            self._fail_all(accepted, result, Reply(start.code, start.message), "data", rules)
            return
        if self._before_body is not None:
            await self._before_body()
        following = self._next_in_pipeline() if last else None
        final = await self._send_body(envelope.data, result, following)
        self._dirty = False  # the final reply ends the transaction, whatever it says
        reply = Reply(final.code, final.message)
        result.reply_code, result.reply_text = final.code, final.message
        if final.code == 250:
            result.queue_id = parse_queue_id(final.message)
            for address in accepted:
                result.recipients[address] = RecipientResult(
                    address, "accepted", final.code, final.message, "data"
                )
        else:
            self._fail_all(accepted, result, reply, "data", rules)

    async def _sequential_envelope(
        self, mail_line: bytes, rcpt_lines: list[bytes]
    ) -> tuple[SMTPResponse, list[SMTPResponse], SMTPResponse | None]:
        """MAIL, each RCPT, DATA: one round trip each."""
        assert self.smtp is not None
        mail = await self.smtp.execute_command(*mail_line.split(b" "))
        if mail.code != 250:
            return mail, [], None
        rcpts = [await self.smtp.execute_command(*line.split(b" ")) for line in rcpt_lines]
        if not any(r.code in (250, 251) for r in rcpts):
            return mail, rcpts, None
        return mail, rcpts, await self.smtp.execute_command(b"DATA")

    async def _pipelined_envelope(
        self, mail_line: bytes, rcpt_lines: list[bytes]
    ) -> tuple[SMTPResponse, list[SMTPResponse], SMTPResponse | None]:
        """RFC 2920: MAIL, every RCPT and DATA in one write, then their replies in order.

        aiosmtplib has no pipelining; this uses its protocol object the way its own
        ``execute_command`` does (the command lock, the pending-reply flag), reading each
        reply in turn, including replies that arrived together in one segment.
        """
        lines = [mail_line, *rcpt_lines, b"DATA"]
        replies = await self._pipeline(lines)
        mail, rcpts, start = replies[0], replies[1:-1], replies[-1]
        accepted = mail.code == 250 and any(r.code in (250, 251) for r in rcpts)
        if start.code == 354 and not accepted:
            # The server opened DATA although nothing can be delivered: end it empty.
            await self._pipeline([b"."])
            return mail, rcpts, None
        return mail, rcpts, (start if accepted else None)

    async def _pipeline(self, lines: list[bytes], *, written: bool = False) -> list[SMTPResponse]:
        assert self.smtp is not None and self.smtp.protocol is not None
        protocol = self.smtp.protocol
        _check_commands(lines)
        lock = protocol._command_lock
        if lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        async with lock:
            protocol._response_pending = True
            if not written:
                protocol.write(b"".join(line + b"\r\n" for line in lines))
            for line in lines:
                self.transcript.client(line.decode("utf-8", "replace"))
            replies = []
            try:
                for _ in lines:
                    reply = await self._next_reply(protocol)
                    self.transcript.server(reply.code, reply.message)
                    replies.append(reply)
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError) as exc:
                self._note_lost(exc, "a reply")
                raise
            finally:
                protocol._response_pending = False
        return replies

    def _note_lost(self, exc: Exception, waiting_for: str) -> None:
        if isinstance(exc, aiosmtplib.SMTPTimeoutError):
            self.transcript.event(f"timed out waiting for {waiting_for}")
        else:
            self.transcript.event("connection lost")

    async def _next_reply(self, protocol: Any) -> SMTPResponse:
        # Replies already waiting in the buffer are parsed from there (ReplyKeepingProtocol).
        try:
            return await protocol.read_response(timeout=self.settings.timeout)
        finally:
            # Keep accepting the replies still to come (aiosmtplib drops unsolicited data).
            protocol._response_pending = True

    def _fail_all(
        self,
        addresses: list[str],
        result: AttemptResult,
        reply: Reply,
        stage: str,
        rules: Sequence[ReplyRule],
    ) -> None:
        classification = classify_reply(reply, rules)
        state = {
            Verdict.OK: "accepted",
            Verdict.TRANSIENT: "deferred",
            Verdict.PERMANENT: "rejected",
            Verdict.PROVIDER: "deferred",
        }[classification.verdict]
        if classification.verdict == Verdict.PROVIDER:
            result.provider_level = True
        if classification.rule is not None and (
            classification.rule.pause_provider or classification.verdict == Verdict.PROVIDER
        ):
            result.pause_provider = True
            result.pause_reason = classification.rule.description or str(reply)
        if classification.retry_after_seconds is not None:
            result.retry_after_seconds = classification.retry_after_seconds
        if result.reply_code is None or stage != "rcpt":
            result.reply_code, result.reply_text = reply.code, reply.text
        for address in addresses:
            result.recipients[address] = RecipientResult(
                address, state, reply.code, reply.text, stage
            )

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
        lines = [*_envelope_lines(following, recipients, mail_params, rcpt_params), b"DATA"]
        _check_commands(lines)
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
        assert self.smtp is not None and self.smtp.protocol is not None
        protocol = self.smtp.protocol
        payload = _dot_stuffed(data)
        self.transcript.body(data)
        if following is not None:
            self.transcript.event("the next message's MAIL, RCPT and DATA follow (PIPELINING)")
            payload += b"".join(line + b"\r\n" for line in following[1])
        lock = protocol._command_lock
        if lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        async with lock:
            protocol._response_pending = True
            protocol.write(payload)
            result.body_sent = True
            self._awaiting_final_reply = True
            self._prefetched = following
            try:
                response = await protocol.read_response(timeout=self.settings.timeout)
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError) as exc:
                self._note_lost(exc, "the final reply")
                raise
            if following is not None:
                protocol._response_pending = True  # their replies are on the way: keep them
        self._awaiting_final_reply = False
        self.transcript.server(response.code, response.message)
        return response

    # -- closing --------------------------------------------------------------------------

    async def close(self) -> None:
        if self.smtp is None:
            return
        if self._prefetched is not None and self.smtp.is_connected:
            # The server is inside the next transaction's DATA: a QUIT would be read as
            # message text. Dropping the connection aborts that transaction (RFC 5321 §3.8).
            self.transcript.event("closed without QUIT: a pipelined transaction was not used")
            self._prefetched = None
            self._close()
        elif self.smtp.is_connected:
            try:
                await asyncio.wait_for(self.smtp.quit(), timeout=min(self.settings.timeout, 5))
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                pass
        self._close()

        # Let the transport finish closing (a TLS shutdown takes a loop turn or two) before
        # the event loop goes away, or the socket is left for the garbage collector.
        if self.smtp is not None and self.peer_address:
            try:
                await asyncio.wait_for(self.smtp.connection_gone.wait(), timeout=1)
            except TimeoutError:
                pass

    def _close(self) -> None:
        if self.smtp is not None:
            self.smtp.close()


def failure_result(session: SMTPSession, envelope: Envelope, failure: SMTPFailure) -> AttemptResult:
    """The attempt record of a message whose connection could not be set up."""
    result = session._new_result(envelope)
    result.outcome = failure.outcome
    result.provider_level = failure.provider_level
    result.error = session.transcript.scrub(str(failure))
    if failure.reply is not None:
        result.reply_code, result.reply_text = failure.reply.code, failure.reply.text
    for address in dict.fromkeys(envelope.recipients):
        result.recipients[address] = RecipientResult(
            address,
            "deferred",
            failure.reply.code if failure.reply else None,
            result.error,
            "connect",
        )
    result.finished_at = time.time()
    result.transcript = session.transcript.render()
    return result


async def deliver(settings: ServerSettings, envelope: Envelope) -> AttemptResult:
    """Open a connection, send one message, close. Never raises for SMTP outcomes."""
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
    result.transcript = session.transcript.render()
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
    token = provider(username=username, force_refresh=force_refresh)
    if inspect.isawaitable(token):
        token = await token
    if not isinstance(token, str) or not token:
        raise SMTPFailure(
            "the OAuth2 token provider returned no token",
            outcome=Outcome.CONFIG_ERROR,
            provider_level=True,
        )
    return token
