"""SMTP sessions kept open between batches, for synchronous callers.

Django's ``with connection:`` (or ``connection.open()`` … ``close()``) asks for one SMTP
session to serve every ``send_messages()`` call in between. A session belongs to the event
loop it was opened on, so the keeper owns one loop, in a thread of its own, for as long as
it is open: each batch runs on that loop, takes the kept session for its server, and gives
it back still open instead of closing it.

Invariant: a session is handed out to one batch at a time, and only while it can take
another message; :meth:`SessionKeeper.close` sends QUIT on every session it still holds and
stops the loop. No Django here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from .transport import ServerSettings, SMTPFailure, SMTPSession

__all__ = ["OpenFailed", "SessionKeeper"]

T = TypeVar("T")


class OpenFailed(Exception):
    """A session could not be opened: the failure, where the dialogue was, and what the
    server advertised (to tell "AUTH not offered" from "AUTH refused")."""

    def __init__(self, failure: SMTPFailure, *, stage: str, advertised: list[str]) -> None:
        super().__init__(str(failure))
        self.failure = failure
        self.stage = stage
        self.advertised = advertised


class SessionKeeper:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sessions: list[SMTPSession] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The keeper's event loop, started on first use."""
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="reliable-mail-session", daemon=True
            )
            thread.start()
            self._loop, self._thread = loop, thread
        return self._loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the keeper's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def open(self, settings: ServerSettings) -> SMTPSession:
        """Open a session (connect, TLS, EHLO, AUTH) and keep it; raises
        :class:`OpenFailed` for whatever :meth:`SMTPSession.open` raises."""

        async def opening() -> SMTPSession:
            session = SMTPSession(settings)
            try:
                await session.open()
            except SMTPFailure as failure:
                await session.close()
                raise OpenFailed(
                    failure,
                    stage=session.stage.value,
                    advertised=session.capabilities.advertised_lines(),
                ) from failure
            except BaseException:
                await session.close()
                raise
            return session

        session = self.run(opening())
        self._sessions.append(session)
        return session

    def take(self, settings: ServerSettings, *, max_messages: int) -> SMTPSession | None:
        """A kept session to this server that can take another message, if any (called
        on the keeper's loop); one that cannot is left for :meth:`close`."""
        for session in self._sessions:
            if session.settings == settings and session.can_take(max_messages):
                self._sessions.remove(session)
                return session
        return None

    def keep(self, session: SMTPSession) -> None:
        """Take back a session a batch is done with (called on the keeper's loop)."""
        self._sessions.append(session)

    @property
    def holds_sessions(self) -> bool:
        return any(session.is_open for session in self._sessions)

    def close(self) -> None:
        """QUIT every kept session and stop the loop; never raises."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        sessions, self._sessions = self._sessions, []

        async def closing() -> None:
            await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(closing(), loop).result(timeout=30)
        except Exception:  # a server that never answers QUIT: the sockets go with the loop
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None
