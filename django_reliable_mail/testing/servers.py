"""Loopback SMTP servers that behave like real providers, including the ones that lie.

Used by our own tests and by the demo, and usable in yours: ``pip install
django-reliable-mail[demo]`` brings aiosmtpd and trustme. Every server listens on
127.0.0.1 only. Behaviours are switched on with keyword arguments, e.g.::

    with LoopbackSMTPServer(extensions=["REQUIRETLS"], discard_when_requiretls=True) as server:
        ...  # a server that says "250 queued" to REQUIRETLS mail and then drops it
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

# aiosmtpd's own AUTH code trips over a property it deprecated itself, and says so as a
# warning and as a log line ("mail.log") at every login; not our concern, nor a user's.
warnings.filterwarnings("ignore", message="Session.login_data is deprecated")


class _NotLoginDataNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Session.login_data is deprecated")


logging.getLogger("mail.log").addFilter(_NotLoginDataNotices())

#: MAIL/RCPT parameters aiosmtpd does not know but that we honour when advertised.
_EXTRA_MAIL_PARAMS = {"REQUIRETLS": "REQUIRETLS", "RET": "DSN", "ENVID": "DSN"}
_EXTRA_RCPT_PARAMS = {"NOTIFY": "DSN", "ORCPT": "DSN"}


@dataclass
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    mail_options: list[str]
    rcpt_options: list[str]
    data: bytes
    tls: bool
    login: str | None


@dataclass
class ServerLog:
    """Everything the server saw, for assertions."""

    commands: list[str] = field(default_factory=list)
    messages: list[ReceivedMessage] = field(default_factory=list)
    discarded: list[ReceivedMessage] = field(default_factory=list)
    connections: int = 0
    auth_attempts: list[tuple[str, str]] = field(default_factory=list)

    def raw(self) -> str:
        return "\n".join(self.commands)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _RecordingSMTP(SMTP):
    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._handler = handler
        handler.log.connections += 1
        self._smtp_methods = {
            name: self._recorded(name, method) for name, method in self._smtp_methods.items()
        }

    def _recorded(self, name: str, method: Callable[[str | None], Any]) -> Callable[..., Any]:
        async def wrapper(arg: str | None) -> None:
            self._handler.log.commands.append(f"{name} {arg}" if arg is not None else name)
            await method(arg)

        return wrapper

    def _strip_params(self, arg: str | None, known: dict[str, str]) -> tuple[str | None, list[str]]:
        if arg is None:
            return arg, []
        kept, extra = [], []
        advertised = {e.split()[0].upper() for e in self._handler.extensions}
        for index, token in enumerate(arg.split(" ")):
            key = token.split("=", 1)[0].upper()
            if index and key in known and known[key] in advertised:
                extra.append(token.upper() if "=" not in token else token)
            else:
                kept.append(token)
        return " ".join(kept), extra

    async def smtp_MAIL(self, arg: str | None) -> None:
        arg, extra = self._strip_params(arg, _EXTRA_MAIL_PARAMS)
        await super().smtp_MAIL(arg)
        if self.envelope is not None and self.envelope.mail_from:
            self.envelope.mail_options.extend(extra)

    async def smtp_RCPT(self, arg: str | None) -> None:
        arg, extra = self._strip_params(arg, _EXTRA_RCPT_PARAMS)
        await super().smtp_RCPT(arg)
        if self.envelope is not None:
            self.envelope.rcpt_options.extend(extra)

    async def smtp_DATA(self, arg: str | None) -> None:
        if self._handler.server.data_start_reply:
            await self.push(self._handler.server.data_start_reply)
            return
        await super().smtp_DATA(arg)


def _login_of(session: Any) -> str | None:
    login = getattr(session.auth_data, "login", None)
    return login.decode() if isinstance(login, bytes) else login


class _Handler:
    def __init__(self, server: LoopbackSMTPServer) -> None:
        self.server = server
        self.log = server.log
        self.extensions = server.extensions

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        hidden = {h.upper() for h in self.server.hide_extensions}
        kept = [
            r
            for r in responses
            if r[4:].split(" ")[0].upper() not in hidden and r.strip() != "250-AUTH"
        ]
        last = kept.pop()  # "250 HELP"
        kept.extend(f"250-{e}" for e in self.extensions)
        kept.append(last)
        return kept

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.server.mail_at.append(time.time())
        if self.server.mail_reply:
            return self.server.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.server.rcpt_reply(address) if self.server.rcpt_reply else None
        if reply:
            return reply
        if self.server.greylist and address not in self.server.greylisted:
            # Classic greylisting: the first attempt for a recipient is deferred.
            self.server.greylisted.add(address)
            return "451 4.7.1 Greylisted, please try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server, session, envelope):
        message = ReceivedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            mail_options=list(envelope.mail_options),
            rcpt_options=list(envelope.rcpt_options),
            data=envelope.original_content or envelope.content,
            tls=server._tls_protocol is not None or self.server.tls == "implicit",
            login=_login_of(session),
        )
        if self.server.disconnect_after_body:
            self.log.messages.append(message)
            server.transport.abort()
            return "250 never sent"
        if self.server.stall_after_body:
            self.log.messages.append(message)
            await asyncio.sleep(self.server.stall_after_body)
            return "250 2.0.0 too late"
        if self.server.reply_delay:
            await asyncio.sleep(self.server.reply_delay)
        if self.server.data_reply:
            return self.server.data_reply
        queue_id = secrets.token_hex(5).upper()
        if self.server.discard_when_requiretls and "REQUIRETLS" in envelope.mail_options:
            # The Strato incident: accepted, queued, never delivered.
            self.log.discarded.append(message)
            return f"250 2.0.0 OK queued as {queue_id}"
        self.log.messages.append(message)
        self.server.accepted_at.append(time.time())
        return f"250 2.0.0 Ok: queued as {queue_id}"

    # -- AUTH mechanisms aiosmtpd does not ship -------------------------------------------

    async def auth_CRAM__MD5(self, server, args):
        challenge = f"<{secrets.token_hex(8)}@loopback>".encode()
        answer = await server.challenge_auth(challenge)
        if not isinstance(answer, bytes):
            return AuthResult(success=False, handled=False)
        user, _, digest = answer.decode().partition(" ")
        self.log.auth_attempts.append(("CRAM-MD5", user))
        password = self.server.users.get(user)
        expected = (
            hmac.new(password.encode(), challenge, hashlib.md5).hexdigest() if password else None
        )
        ok = expected is not None and hmac.compare_digest(expected, digest)
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(user.encode(), b""))

    async def auth_XOAUTH2(self, server, args):
        if len(args) < 2:
            return AuthResult(success=False, handled=False)
        raw = base64.b64decode(args[1]).decode()
        fields = dict(part.split("=", 1) for part in raw.split("\x01") if "=" in part)
        user, token = fields.get("user", ""), fields.get("auth", "").removeprefix("Bearer ")
        self.log.auth_attempts.append(("XOAUTH2", user))
        if self.server.tokens.get(user) == token:
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        error = base64.b64encode(b'{"status":"401","schemes":"bearer"}')
        await server.challenge_auth(error, encode_to_b64=False)
        return AuthResult(success=False, handled=False)


class LoopbackSMTPServer:
    """An aiosmtpd server on 127.0.0.1 in its own thread, with switchable behaviours."""

    def __init__(
        self,
        *,
        tls: str = "none",
        tls_context: ssl.SSLContext | None = None,
        users: dict[str, str] | None = None,
        tokens: dict[str, str] | None = None,
        auth_require_tls: bool = True,
        auth_mechanisms: list[str] | None = None,
        extensions: list[str] | None = None,
        hide_extensions: list[str] | None = None,
        size_limit: int | None = None,
        smtputf8: bool = True,
        mail_reply: str | None = None,
        rcpt_reply: Callable[[str], str | None] | None = None,
        data_start_reply: str | None = None,
        data_reply: str | None = None,
        disconnect_after_body: bool = False,
        stall_after_body: float = 0,
        discard_when_requiretls: bool = False,
        greylist: bool = False,
        reply_delay: float = 0,
        port: int | None = None,
    ) -> None:
        if tls not in ("none", "starttls", "implicit"):
            raise ValueError(f"tls must be none, starttls or implicit, not {tls!r}")
        if tls != "none" and tls_context is None:
            raise ValueError("a TLS server needs tls_context (see server_tls_context())")
        self.tls = tls
        self.users = users or {}
        self.tokens = tokens or {}
        self.extensions = list(extensions or [])
        self.hide_extensions = list(hide_extensions or [])
        self.mail_reply = mail_reply
        self.rcpt_reply = rcpt_reply
        self.data_start_reply = data_start_reply
        self.data_reply = data_reply
        self.disconnect_after_body = disconnect_after_body
        self.stall_after_body = stall_after_body
        self.discard_when_requiretls = discard_when_requiretls
        self.greylist = greylist
        self.greylisted: set[str] = set()
        self.reply_delay = reply_delay
        self.log = ServerLog()
        #: Wall-clock times of every MAIL command and every accepted message (rates).
        self.mail_at: list[float] = []
        self.accepted_at: list[float] = []
        self.host = "127.0.0.1"
        self.port = port or free_port()
        handler = _Handler(self)
        kwargs: dict[str, Any] = {
            "hostname": self.host,
            "port": self.port,
            "server_hostname": "loopback.test",
            "data_size_limit": size_limit,
            "enable_SMTPUTF8": smtputf8,
            "decode_data": False,
            "ident": "django-reliable-mail loopback",
        }
        if self.users or self.tokens:
            kwargs["authenticator"] = self._authenticate
            # aiosmtpd only counts STARTTLS as TLS; an implicit-TLS socket is encrypted too.
            kwargs["auth_require_tls"] = auth_require_tls and tls != "implicit"
            builtin = {"PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"}
            wanted = set(auth_mechanisms or builtin)
            kwargs["auth_exclude_mechanism"] = sorted(builtin - wanted)
        else:
            kwargs["auth_exclude_mechanism"] = ["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"]
        if tls == "implicit":
            kwargs["ssl_context"] = tls_context
        elif tls == "starttls":
            kwargs["tls_context"] = tls_context
            kwargs["require_starttls"] = False
        self._controller = _Controller(handler, **kwargs)
        self._lock = threading.Lock()

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        login = auth_data.login.decode() if isinstance(auth_data.login, bytes) else auth_data.login
        password = auth_data.password
        password = password.decode() if isinstance(password, bytes) else password
        self.log.auth_attempts.append((mechanism, login))
        ok = login in self.users and self.users[login] == password
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    @property
    def messages(self) -> list[ReceivedMessage]:
        return self.log.messages

    def start(self) -> LoopbackSMTPServer:
        self._controller.start()
        self.log.connections = 0  # aiosmtpd's own start-up probe is not a client
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> LoopbackSMTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _RecordingSMTP(self.handler, **self.SMTP_kwargs)


def make_certificate_authority(directory: str) -> tuple[ssl.SSLContext, str]:
    """A throwaway CA with a certificate for 127.0.0.1 and localhost.

    Returns the server-side SSL context and the path of the CA file a client should trust.
    """
    import os

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost", "loopback.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_path = os.path.join(directory, "loopback-ca.pem")
    ca.cert_pem.write_to_path(ca_path)
    return context, ca_path
