"""A raw SMTP server on loopback that misbehaves on the wire, in a thread of its own.

aiosmtpd cannot be made to close a connection before its greeting, greet with garbage, or
answer the end of DATA with bytes that are not UTF-8: this one can. It speaks just enough
SMTP for the sending side (EHLO, MAIL, RCPT, DATA, RSET, QUIT), one command at a time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

GREETING = b"220 misbehaving.test ESMTP\r\n"
#: Greetings that are not SMTP at all.
GARBAGE = b"HELLO, THIS IS NOT SMTP\r\n"


class MisbehavingServer:
    """``greeting``: what is sent on accept (None: close at once); ``final_reply``: the
    reply to the end of DATA, given the message's bytes; ``drop_at_ehlo``: close the
    connection when EHLO comes."""

    def __init__(
        self,
        *,
        greeting: bytes | None = GREETING,
        final_reply: Callable[[bytes], bytes] = lambda data: b"250 2.0.0 queued as Q1\r\n",
        drop_at_ehlo: bool = False,
    ) -> None:
        self.greeting = greeting
        self.final_reply = final_reply
        self.drop_at_ehlo = drop_at_ehlo
        self.connections = 0
        self.messages: list[bytes] = []
        self.host = "127.0.0.1"
        self.tls = "none"
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, self.host, 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.greeting is None:
                return
            writer.write(self.greeting)
            await writer.drain()
            if not self.greeting.startswith(b"220"):
                await reader.read(1024)  # the client gives up on its own
                return
            await self._dialogue(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _dialogue(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                data = await reader.readuntil(b"\r\n.\r\n")
                self.messages.append(data)
                writer.write(self.final_reply(data))
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            elif verb == b"EHLO" and self.drop_at_ehlo:
                return
            elif verb == b"EHLO":
                writer.write(b"250-misbehaving.test\r\n250 8BITMIME\r\n")
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()

    def stop(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
