"""An SMTP server that misbehaves on the wire exactly as scripted, and logs what it got.

aiosmtpd cannot send arbitrary bytes, so this is a raw asyncio server on 127.0.0.1. It
behaves like a decent server (PIPELINING, optional STARTTLS and AUTH PLAIN/LOGIN) except
where its script says otherwise: at the n-th reply of a stage (counted over the server's
life, all connections together) it sends any bytes instead (any code, several lines with
mixed codes, malformed lines, non-UTF-8 bytes, NUL, lines of any length, optionally one
small piece at a time), hangs up, or falls silent.

Its own state follows what it really sent: a recipient counts only after a 250/251, and it
reads a body only after it answered DATA with a 354. A ``lenient`` server goes on with a
transaction whatever it answered to MAIL, and answers DATA with 354 even when it accepted
no recipient (RFC 2920 §3.1 wants 554 then), so that a client which takes an odd reply for
success shows it by sending a body. For every body it logs which job it carried (the
``X-Job`` header, or a subject "job N"), whether the final "." arrived, and what it
answered to it: the oracle the hostile-server tests judge the client by. With ``echo``,
its replies carry the AUTH payload it was sent (as received and decoded), as a careless
server's would.

A misbehaviour may also be set for every reply of a stage (``always``: a server that closes
every connection at once, greets with garbage, or drops every connection at EHLO), and the
normal reply to the end of the data may depend on the message (``final_reply``). For
synchronous callers (Django), :func:`serving_in_a_thread` runs it on a loop of its own.
The hypothesis strategies at the end say what such a server may send, for the fuzzers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import re
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st

STAGES = (
    "greeting",
    "ehlo",
    "starttls",
    "auth",
    "mail",
    "rcpt",
    "data",
    "end_of_data",
    "rset",
    "quit",
)
#: In a scripted reply, replaced by the AUTH payload the server last received.
ECHO = b"{echo}"
#: A greeting that is not SMTP at all.
GARBAGE = b"HELLO, THIS IS NOT SMTP\r\n"
_JOB_HEADER = re.compile(rb"^(?:X-Job: |Subject: job )(\S+)\r?$", re.MULTILINE)


@dataclass(frozen=True)
class Misbehaviour:
    #: "send" (``data`` instead of the reply), "disconnect", or "silence" (no reply, ever).
    kind: str
    data: bytes = b""
    #: Deliver ``data`` in small pieces, each written on its own.
    trickle: bool = False
    #: Hang up right after sending ``data``.
    hang_up: bool = False


def send(data: bytes, *, trickle: bool = False, hang_up: bool = False) -> Misbehaviour:
    return Misbehaviour("send", data, trickle, hang_up)


DISCONNECT = Misbehaviour("disconnect")
SILENCE = Misbehaviour("silence")


def answered(data: bytes | None, *codes: int) -> bool:
    """Whether ``data`` is, read generously, one reply with one of ``codes`` on every line.

    Generous on purpose: the oracle must not call a reply "not 250" that a strict client
    could still have taken for 250.
    """
    if not data or not data.endswith(b"\n"):
        return False
    lines = data.split(b"\n")[:-1]
    wanted = {str(code).encode() for code in codes}
    if any(line[:3] not in wanted for line in lines) or len({line[:3] for line in lines}) > 1:
        return False
    return all(line[3:4] == b"-" for line in lines[:-1]) and lines[-1][3:4] != b"-"


@dataclass
class Body:
    """One DATA the server entered: what it carried and how it ended."""

    connection: int
    job: str | None
    #: Whether the server answered MAIL with a 250 in this transaction.
    mail_ok: bool
    #: Recipients the server answered 250/251 in this transaction.
    accepted: list[str]
    complete: bool = False
    #: What the server sent after the final "." (None: nothing).
    answer: bytes | None = None
    #: The lines received, as they came (dot-stuffed), without the final ".".
    data: bytes = b""

    @property
    def answered_250(self) -> bool:
        return self.mail_ok and self.complete and answered(self.answer, 250)

    @property
    def may_be_kept(self) -> bool:
        """Whether the server may have taken the message: it arrived whole in a transaction
        with recipients, and the server did not plainly refuse it (a 4xx or 5xx reply)."""
        refused = answered(self.answer, *range(400, 600))
        return self.mail_ok and bool(self.accepted) and self.complete and not refused


@dataclass
class ServerLog:
    connections: int = 0
    commands: list[str] = field(default_factory=list)
    bodies: list[Body] = field(default_factory=list)
    #: AUTH payloads as received (base64 lines).
    auth_payloads: list[bytes] = field(default_factory=list)
    #: Lines read as commands that are none: a body sent without a 354, for one.
    unrecognized: list[bytes] = field(default_factory=list)
    #: (connection, sender) of every MAIL command, whatever the server answered.
    senders: list[tuple[int, str]] = field(default_factory=list)

    @property
    def messages(self) -> list[bytes]:
        """The data of every body that arrived whole (its final "." came)."""
        return [body.data for body in self.bodies if body.complete]

    def copies(self) -> Counter[tuple[str, str]]:
        """(job, recipient) → how many bodies the server may have kept for them."""
        return Counter(
            (body.job, recipient)
            for body in self.bodies
            if body.may_be_kept and body.job is not None
            for recipient in body.accepted
        )

    def jobs_delivered(self) -> dict[str, list[str]]:
        """Job → recipients the server took with a 250 to the end of the data."""
        delivered: dict[str, list[str]] = {}
        for body in self.bodies:
            if body.answered_250 and body.job is not None:
                delivered.setdefault(body.job, []).extend(body.accepted)
        return delivered


class _Hangup(Exception):
    pass


class _Silent(Exception):
    pass


class HostileServer:
    def __init__(
        self,
        *,
        script: Mapping[tuple[str, int], Misbehaviour] | None = None,
        always: Mapping[str, Misbehaviour] | None = None,
        final_reply: Callable[[bytes], bytes] | None = None,
        tls_context: ssl.SSLContext | None = None,
        pipelining: bool = True,
        users: Mapping[str, str] | None = None,
        echo: bool = False,
        lenient: bool = False,
    ) -> None:
        self.lenient = lenient
        #: (stage, n) → what the n-th reply of that stage (over the server's life) is instead.
        self.script = dict(script or {})
        #: stage → what every reply of that stage is instead, where the script says nothing.
        self.always = dict(always or {})
        #: The normal reply to the end of a message's data, given its data.
        self.final_reply = final_reply
        self.tls_context = tls_context
        self.pipelining = pipelining
        self.users = dict(users or {})
        self.echo = echo
        self.log = ServerLog()
        self.counts: Counter[str] = Counter()
        self.host = "127.0.0.1"
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._command_arrived = asyncio.Event()

    @property
    def tls(self) -> str:
        """The TLS policy a client needs for this server (as a provider's ``TLS``)."""
        return "starttls" if self.tls_context is not None else "none"

    async def wait_for_command(self, prefix: str) -> None:
        """Until a command starting with ``prefix`` has arrived."""
        while not any(c.startswith(prefix) for c in self.log.commands):
            self._command_arrived.clear()
            await self._command_arrived.wait()

    async def start(self) -> HostileServer:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def __aenter__(self) -> HostileServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.log.connections += 1
        connection = _Connection(self, self.log.connections, reader, writer)
        try:
            await connection.run()
        except _Silent:
            await connection.drain_until_closed()
        except (_Hangup, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass  # stopped: the connection just ends
        finally:
            writer.close()
            self._handlers.discard(task)

    def misbehaviour(self, stage: str) -> Misbehaviour | None:
        number = self.counts[stage]
        self.counts[stage] += 1
        return self.script.get((stage, number), self.always.get(stage))


class _Connection:
    def __init__(
        self,
        server: HostileServer,
        number: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.number = number
        self.reader = reader
        self.writer = writer
        self.tls = False
        self.in_transaction = False
        self.mail_ok = False
        self.accepted: list[str] = []
        self.echo = b""
        self.sent: bytes | None = None
        sock = writer.get_extra_info("socket")
        if sock is not None:  # pieces go out as they are written
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def run(self) -> None:
        await self.reply("greeting", b"220 hostile.test ESMTP\r\n")
        while line := await self.reader.readline():
            command = line.rstrip(b"\r\n")
            self.server.log.commands.append(command.decode("utf-8", "replace"))
            self.server._command_arrived.set()
            verb = command.split(b" ", 1)[0].upper()
            handler = getattr(self, f"on_{verb.decode('ascii', 'replace').lower()}", None)
            if handler is None:
                self.server.log.unrecognized.append(command)
                await self.write(b"500 5.5.2 command not recognized\r\n")
            elif await handler(command) is False:
                return

    async def drain_until_closed(self) -> None:
        while await self.reader.read(65536):
            pass

    # -- replies ------------------------------------------------------------------------

    async def reply(self, stage: str, normal: bytes) -> bytes:
        """Send ``normal`` or what the script says instead; returns what was sent."""
        misbehaviour = self.server.misbehaviour(stage)
        if misbehaviour is None:
            data = normal
        elif misbehaviour.kind == "disconnect":
            raise _Hangup
        elif misbehaviour.kind == "silence":
            raise _Silent
        else:
            data = misbehaviour.data
        data = data.replace(ECHO, self.echo)
        self.sent = data  # what the server answered, even if it hangs up next
        await self.write(data, trickle=misbehaviour is not None and misbehaviour.trickle)
        if misbehaviour is not None and misbehaviour.hang_up:
            raise _Hangup
        return data

    async def write(self, data: bytes, *, trickle: bool = False) -> None:
        if not trickle:
            self.writer.write(data)
            await self.writer.drain()
            return
        piece = 1 if len(data) <= 512 else 997
        for start in range(0, len(data), piece):
            self.writer.write(data[start : start + piece])
            await self.writer.drain()
            await asyncio.sleep(0)  # a turn of the loop: each piece its own segment

    def _echoed(self, text: bytes) -> bytes:
        return text + (b" " + ECHO if self.server.echo and self.echo else b"") + b"\r\n"

    # -- commands -----------------------------------------------------------------------

    def _extensions(self) -> list[bytes]:
        lines = [b"8BITMIME", b"SIZE 10000000"]
        if self.server.pipelining:
            lines.append(b"PIPELINING")
        if self.server.tls_context is not None and not self.tls:
            lines.append(b"STARTTLS")
        if self.server.users:
            lines.append(b"AUTH PLAIN LOGIN")
        return lines

    async def on_ehlo(self, command: bytes) -> None:
        lines = [b"hostile.test", *self._extensions()]
        normal = b"".join(b"250-" + line + b"\r\n" for line in lines[:-1])
        await self.reply("ehlo", normal + b"250 " + lines[-1] + b"\r\n")

    async def on_helo(self, command: bytes) -> None:
        await self.reply("ehlo", b"250 hostile.test\r\n")

    async def on_starttls(self, command: bytes) -> None:
        if self.server.tls_context is None or self.tls:
            await self.write(b"454 4.7.0 TLS not available\r\n")
            return
        sent = await self.reply("starttls", b"220 2.0.0 go ahead\r\n")
        if answered(sent, 220) and self.server.tls_context is not None and not self.tls:
            await self.writer.start_tls(self.server.tls_context)
            self.tls = True

    async def on_auth(self, command: bytes) -> None:
        words = command.split(b" ")
        mechanism = words[1].upper() if len(words) > 1 else b""
        if mechanism == b"PLAIN":
            payload = words[2] if len(words) > 2 else await self._challenge(b"")
            self._remember(payload)
            parts = _b64(payload).split(b"\0")
            ok = len(parts) == 3 and self._valid(parts[1], parts[2])
        elif mechanism == b"LOGIN":
            # The user name may come with the command (an initial response, as aiosmtplib
            # sends it) or after a "Username:" challenge.
            user = words[2] if len(words) > 2 else await self._challenge(b"VXNlcm5hbWU6")
            password = await self._challenge(b"UGFzc3dvcmQ6")
            self._remember(password)
            ok = self._valid(_b64(user), _b64(password))
        else:
            await self.write(b"504 5.5.4 mechanism not supported\r\n")
            return
        if ok:
            await self.reply("auth", self._echoed(b"235 2.7.0 Authentication successful"))
        else:
            await self.reply("auth", self._echoed(b"535 5.7.8 Authentication failed"))

    async def _challenge(self, text: bytes) -> bytes:
        await self.write(b"334 " + text + b"\r\n")
        return (await self.reader.readline()).rstrip(b"\r\n")

    def _remember(self, payload: bytes) -> None:
        self.server.log.auth_payloads.append(payload)
        self.echo = payload + b" " + _b64(payload)

    def _valid(self, user: bytes, password: bytes) -> bool:
        expected = self.server.users.get(user.decode("utf-8", "replace"))
        return expected is not None and expected.encode() == password

    async def on_mail(self, command: bytes) -> None:
        if self.in_transaction:
            await self.write(b"503 5.5.1 nested MAIL\r\n")
            return
        self.server.log.senders.append((self.number, _address(command)))
        sent = await self.reply("mail", b"250 2.1.0 Sender OK\r\n")
        self.mail_ok = answered(sent, 250)
        self.in_transaction = self.mail_ok or self.server.lenient
        self.accepted = []

    async def on_rcpt(self, command: bytes) -> None:
        if not self.in_transaction:
            await self.write(b"503 5.5.1 need MAIL first\r\n")
            return
        sent = await self.reply("rcpt", self._echoed(b"250 2.1.5 Recipient OK"))
        if answered(sent, 250, 251):
            self.accepted.append(_address(command))

    async def on_data(self, command: bytes) -> None:
        if not self.in_transaction:
            normal = b"503 5.5.1 need MAIL first\r\n"
        elif not self.accepted and not self.server.lenient:
            normal = b"554 5.5.1 no valid recipients\r\n"
        else:
            normal = b"354 End data with <CR><LF>.<CR><LF>\r\n"
        sent = await self.reply("data", normal)
        if answered(sent, 354):
            await self._body()

    async def _body(self) -> None:
        body = Body(self.number, None, self.mail_ok, list(self.accepted))
        self.server.log.bodies.append(body)
        self.in_transaction, self.mail_ok, self.accepted = False, False, []
        lines = []
        while (line := await self.reader.readline()) != b".\r\n":
            if not line:
                return  # the client went away: the message is not complete
            lines.append(line)
            if body.job is None and (found := _JOB_HEADER.search(line)):
                body.job = found.group(1).decode()
        body.complete, body.data = True, b"".join(lines)
        queue_id = f"Q{len(self.server.log.bodies)}".encode()
        if self.server.final_reply is not None:
            normal = self.server.final_reply(body.data)
        else:
            normal = self._echoed(b"250 2.0.0 Ok: queued as " + queue_id)
        self.sent = None
        try:
            await self.reply("end_of_data", normal)
        finally:
            body.answer = self.sent

    async def on_rset(self, command: bytes) -> None:
        self.in_transaction, self.mail_ok, self.accepted = False, False, []
        await self.reply("rset", b"250 2.0.0 OK\r\n")

    async def on_noop(self, command: bytes) -> None:
        await self.write(b"250 2.0.0 OK\r\n")

    async def on_quit(self, command: bytes) -> bool:
        await self.reply("quit", b"221 2.0.0 Bye\r\n")
        return False


def _b64(data: bytes) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        return b""


def _address(command: bytes) -> str:
    found = re.search(rb"<([^>]*)>", command)
    return found.group(1).decode("utf-8", "replace") if found else ""


@contextlib.contextmanager
def serving_in_a_thread(server: HostileServer) -> Iterator[HostileServer]:
    """Run ``server`` on an event loop of its own, for synchronous callers (Django)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="hostile-smtp", daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# -- what a hostile server may send (hypothesis strategies) --------------------------------

#: Half of them codes that mean success at some stage: what a careless client takes for it.
plausible_codes = st.sampled_from([220, 221, 235, 250, 251, 252, 334, 354])
codes = st.one_of(
    plausible_codes,
    plausible_codes,
    st.sampled_from([200, 299, 399, 421, 450, 452, 454, 500, 503, 530, 535, 550, 554, 599]),
    st.integers(100, 599),
)
texts = st.one_of(
    st.just(b"ok"),
    st.sampled_from(
        [
            b"Empf\xe4nger unbekannt",
            b"nul\x00byte",
            b"5.1.1 user unknown",
            b"2.0.0 queued as \xff\xfeQ",
            b"\x1b[31m red",
            ECHO,
            b"5.7.8 " + ECHO,
        ]
    ),
    st.binary(max_size=24).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)


def _line(code: int, text: bytes, *, last: bool) -> bytes:
    return str(code).encode() + (b" " if last else b"-") + text + b"\r\n"


def _lines(pairs: list[tuple[int, bytes]]) -> bytes:
    return b"".join(_line(c, t, last=i == len(pairs) - 1) for i, (c, t) in enumerate(pairs))


single = st.builds(lambda c, t: _line(c, t, last=True), codes, texts)
same_code = st.builds(
    lambda c, ts: _lines([(c, t) for t in ts]), codes, st.lists(texts, min_size=2, max_size=4)
)
mixed_codes = st.lists(st.tuples(codes, texts), min_size=2, max_size=4).map(_lines)
malformed = st.sampled_from(
    [
        b"-12 minus\r\n",
        b" 12 space\r\n",
        b"099 low\r\n",
        b"600 high\r\n",
        b"2500 four digits\r\n",
        b"hello there\r\n",
        b"\r\n",
        b"250x\r\n",
        b"25\r\n",
        b"\x00\x00\x00\r\n",
        b"\xff\xfe\r\n",
    ]
)
long_line = st.builds(
    lambda c, n: str(c).encode() + b" " + b"x" * n + b"\r\n",
    codes,
    st.sampled_from([8180, 8200, 10_000, 100_000, 1_000_000]),
)
bare_newline = st.builds(lambda c, t: str(c).encode() + b" " + t + b"\n", codes, texts)
payloads = st.one_of(single, same_code, mixed_codes, malformed, long_line, bare_newline)
#: Mostly one plain reply line: the way a server most often says something unexpected.
misbehaviours = st.one_of(
    st.builds(send, single),
    st.builds(send, single),
    st.builds(send, single),
    st.builds(send, payloads, trickle=st.booleans(), hang_up=st.booleans()),
    st.sampled_from([DISCONNECT, SILENCE]),
)
#: Which reply of a stage (over the server's life): mostly the first.
occurrences = st.sampled_from([0, 0, 0, 1, 2, 3])
#: Every stage, the transaction's three times as often.
TRANSACTION_STAGES = ("mail", "rcpt", "data", "end_of_data")
stages = st.sampled_from([*STAGES, *TRANSACTION_STAGES, *TRANSACTION_STAGES])
scripts = st.dictionaries(st.tuples(stages, occurrences), misbehaviours, min_size=1, max_size=5)


@dataclass(frozen=True)
class ServerPlan:
    """How the hostile server of one generated example behaves."""

    tls: str
    pipelining: bool
    lenient: bool
    auth: bool
    #: The AUTH mechanism the client is allowed to use.
    mechanism: str
    script: Mapping[tuple[str, int], Misbehaviour]
    always: Mapping[str, Misbehaviour]

    def server(self, *, tls_context: ssl.SSLContext, users: Mapping[str, str]) -> HostileServer:
        """The server, echoing the AUTH payload it gets; ``users`` only if it asks for AUTH."""
        return HostileServer(
            script=self.script,
            always=self.always,
            tls_context=tls_context if self.tls == "starttls" else None,
            pipelining=self.pipelining,
            lenient=self.lenient,
            users=users if self.auth else None,
            echo=True,
        )


#: Never a misbehaviour at every reply of a stage…
never = st.just({})
#: …or now and then: a provider broken for good.
always = st.one_of(never, never, st.dictionaries(stages, misbehaviours, max_size=1))


def server_plans(
    *,
    script: st.SearchStrategy[dict[tuple[str, int], Misbehaviour]] = scripts,
    every_time: st.SearchStrategy[dict[str, Misbehaviour]] = never,
) -> st.SearchStrategy[ServerPlan]:
    return st.builds(
        ServerPlan,
        tls=st.sampled_from(["none", "starttls"]),
        pipelining=st.booleans(),
        lenient=st.booleans(),
        auth=st.booleans(),
        mechanism=st.sampled_from(["PLAIN", "LOGIN"]),
        script=script,
        always=every_time,
    )


#: The recipients of one message.
recipient_lists = st.lists(
    st.sampled_from(["a@example.com", "b@example.com", "c@example.com"]),
    min_size=1,
    max_size=3,
    unique=True,
)


# -- running a fuzzer --------------------------------------------------------------------

#: Each run draws its own seed (hypothesis is not derandomized); a failure names it, and
#: ``RELIABLE_MAIL_FUZZ_SEED`` replays that run.
FUZZ_SEED = int(os.environ.get("RELIABLE_MAIL_FUZZ_SEED") or random.randrange(2**32))


def fuzzing(default_examples: int, *, suppress: tuple[HealthCheck, ...] = ()) -> Callable:
    """A fuzzer's hypothesis settings: ``RELIABLE_MAIL_FUZZ_EXAMPLES`` examples (else
    ``default_examples``), no deadline, the run's seed."""
    examples = int(os.environ.get("RELIABLE_MAIL_FUZZ_EXAMPLES") or default_examples)
    checks = [HealthCheck.too_slow, HealthCheck.data_too_large, *suppress]

    def decorate(test: Callable) -> Callable:
        configured = settings(
            max_examples=examples, deadline=None, print_blob=True, suppress_health_check=checks
        )
        return seed(FUZZ_SEED)(configured(test))

    return decorate


@contextlib.contextmanager
def naming_the_seed() -> Iterator[None]:
    """A failure inside says which seed replays the run."""
    try:
        yield
    except Exception as failure:
        failure.add_note(f"RELIABLE_MAIL_FUZZ_SEED={FUZZ_SEED} replays this run")
        raise
