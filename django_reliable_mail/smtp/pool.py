"""Send a batch of messages for one provider over a few reused connections.

Up to ``max_connections`` sessions run side by side (asyncio); each takes the next message,
sends it, and reconnects after ``max_messages_per_connection`` messages, at the server's
MAILMAX, or when the connection breaks. While a body goes out, a session takes its next
message already, so that message's commands can follow the body (PIPELINING). A
provider-level failure, or a connection that cannot be set up, stops the whole batch: the
messages not yet tried come back untouched.

With a ``SessionKeeper``, a connection starts on the session it keeps for this server, if
any, and gives its session back open at the end instead of closing it.

With ``refill``, the batch is a stream: when few messages are left, the next ones are asked
for while the connections keep sending, so claiming overlaps sending and the connections
stay open from one batch to the next.

Invariant: every job gets exactly one result or comes back untouched, whatever one
session or server does; a connection is opened only for a job that has no result yet, so
there are never more connections than jobs. What is not the server's doing (a body-start
mark that could not be committed, a failed rate-limit reservation or refill) stops the
batch: the connections finish the message they are on, and the error is raised at the end.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .classify import Outcome
from .keeper import SessionKeeper
from .transport import (
    AttemptResult,
    BodyStartNotRecorded,
    Envelope,
    ServerSettings,
    SMTPFailure,
    SMTPSession,
    failure_result,
)


@dataclass
class Job:
    key: Any
    envelope: Envelope
    before_body: Callable[[], Awaitable[None]] | None = None


@dataclass
class BatchOutcome:
    #: Every result, when no ``on_result`` callback takes them as they come.
    results: list[tuple[Job, AttemptResult]]
    #: Jobs never tried because the provider failed first.
    untouched: list[Job]
    connections: int = 0


@dataclass
class _Refill:
    """The stream's state: the claim under way, and whether more may come."""

    done: bool
    low_water: int
    task: asyncio.Future[None] | None = None
    error: BaseException | None = None


class _Batch:
    def __init__(
        self,
        settings: ServerSettings,
        jobs: list[Job],
        *,
        max_messages_per_connection: int,
        least: int,
        reserve_slot: Callable[[], Awaitable[float]] | None,
        on_result: Callable[[Job, AttemptResult], None] | None,
        refill: Callable[[], Awaitable[list[Job]]] | None,
        sessions: SessionKeeper | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.max_messages = max_messages_per_connection
        self.reserve_slot = reserve_slot
        self.on_result = on_result
        self.refill = refill
        self.queue: deque[Job] = deque(jobs)
        self.outcome = BatchOutcome(results=[], untouched=[])
        #: Set when no further message may be started (provider failure, or an error that
        #: is not the server's: ``error``).
        self.stopped = asyncio.Event()
        self.error: BaseException | None = None
        # Ask for more while a quarter of the last batch is left (a claim takes a while: a
        # database round trip or a wait behind the recording), and while each connection
        # still has at least two messages to send.
        self.least = least
        self.stream = _Refill(done=refill is None, low_water=max(least, len(jobs) // 4))

    def stop(self, error: BaseException | None = None) -> None:
        if error is not None and self.error is None:
            self.error = error
        self.stopped.set()

    async def _take_more(self) -> None:
        assert self.refill is not None
        try:
            more = await self.refill()
        except Exception as exc:  # re-raised once the connections have finished
            self.stream.error, more = exc, []
        if more and not self.stopped.is_set():
            self.queue.extend(more)
            self.stream.low_water = max(self.least, len(more) // 4)
        elif more:
            self.outcome.untouched.extend(more)
        else:
            self.stream.done = True
        self.stream.task = None

    def pop(self) -> Job | None:
        """The next job if one is queued; asks for more first when few are left."""
        stream = self.stream
        if not stream.done and stream.task is None and len(self.queue) <= stream.low_water:
            stream.task = asyncio.ensure_future(self._take_more())
        return self.queue.popleft() if self.queue else None

    async def next_job(self) -> Job | None:
        while not self.stopped.is_set():
            if (job := self.pop()) is not None:
                return job
            if self.stream.done or self.stream.task is None:
                return None
            await asyncio.shield(self.stream.task)
        return None

    def finished(self, job: Job, result: AttemptResult) -> None:
        if self.on_result is not None:
            self.on_result(job, result)  # the caller keeps what it needs: a stream has no end
        else:
            self.outcome.results.append((job, result))

    async def run(self, connections: int) -> BatchOutcome:
        await asyncio.gather(*(_Connection(self).run() for _ in range(max(1, connections))))
        if self.stream.task is not None:  # a refill still on its way when the batch stopped
            await self.stream.task
        self.outcome.untouched.extend(self.queue)
        if self.error is not None:
            raise self.error
        if self.stream.error is not None:
            raise self.stream.error
        return self.outcome


class _Connection:
    """One connection's turn through the queue; opens another when one ends."""

    def __init__(self, batch: _Batch) -> None:
        self.batch = batch
        self.session: SMTPSession | None = None
        # A connection's latest result is handed on only when the next message starts or
        # the connection closes: the QUIT belongs in the last message's transcript.
        self.last: tuple[Job, AttemptResult] | None = None
        # Taken from the queue while the current body goes out, to pipeline its commands.
        self.reserved: Job | None = None

    async def run(self) -> None:
        batch = self.batch
        job: Job | None = None
        try:
            while True:
                if self.reserved is not None:
                    if batch.stopped.is_set():
                        break
                    job, self.reserved = self.reserved, None
                elif (job := await batch.next_job()) is None:
                    break
                if await self._open_for(job):
                    await self._send(job)
                job = None
        except Exception as exc:  # not the server's: the database side failed us
            batch.stop(exc)
        finally:
            for unsent in (self.reserved, job):
                if unsent is not None:  # back for another connection, or untouched
                    batch.queue.appendleft(unsent)
            if self.session is not None:
                await self._end()

    async def _end(self) -> None:
        """Give the session back to the keeper, or close it."""
        session, keeper = self.session, self.batch.sessions
        if keeper is None or session is None or not session.is_open or session.body_in_flight:
            await self._close()
            return
        self.session = None
        if self.last is not None:
            self.last[1].transcript = session.transcript.render()
            self.batch.finished(*self.last)
            self.last = None
        keeper.keep(session)

    def _take_next(self) -> Envelope | None:
        session = self.session
        if (
            self.batch.reserve_slot is not None  # each MAIL waits for its rate-limit slot
            or self.batch.stopped.is_set()
            or session is None
            or not session.can_take(self.batch.max_messages)
        ):
            return None
        self.reserved = self.batch.pop()
        return self.reserved.envelope if self.reserved is not None else None

    async def _open_for(self, job: Job) -> bool:
        """A usable session for ``job``; False when opening one gave the job its result."""
        batch = self.batch
        if self.session is not None and self.session.can_take(batch.max_messages):
            return True
        if self.session is not None:
            await self._close()
        if batch.sessions is not None:
            self.session = batch.sessions.take(batch.settings, max_messages=batch.max_messages)
            if self.session is not None:
                return True
        self.session = session = SMTPSession(batch.settings)
        batch.outcome.connections += 1
        try:
            await session.open()
            return True
        except SMTPFailure as exc:
            failure = exc
        except Exception as exc:  # open() promises SMTPFailure only; never lose the job
            failure = SMTPFailure(
                f"unexpected error while connecting: {exc!r}",
                outcome=Outcome.TRANSIENT_FAILURE,
                provider_level=True,
            )
        result = failure_result(session, job.envelope, failure)
        await session.close()
        self.session = None
        result.transcript = session.transcript.render()
        batch.finished(job, result)
        # A connection that cannot be set up says nothing about the message, and the next
        # one would most likely fail alike: stop the batch rather than open one connection
        # per message.
        batch.stop()
        return False

    async def _send(self, job: Job) -> None:
        batch = self.batch
        session = self.session
        assert session is not None
        if batch.reserve_slot is not None:
            wait = await batch.reserve_slot()
            if wait > 0:
                await asyncio.sleep(wait)
        try:
            result = await session.send(
                job.envelope, before_body=job.before_body, next_envelope=self._take_next
            )
        except BodyStartNotRecorded:
            raise  # its body did not go out: the batch stops, the job comes back untouched
        except Exception as exc:  # send() records every failure itself; this is the guard
            result = failure_result(session, job.envelope, _unexpected(session, exc))
            session.abandon("an unexpected error")
        if self.last is not None:
            batch.finished(*self.last)
        self.last = (job, result)
        if result.provider_level or result.pause_provider:
            batch.stop()
        if not session.is_open:
            await self._close()

    async def _close(self) -> None:
        session = self.session
        assert session is not None
        self.session = None
        await session.close()
        if self.last is not None:
            self.last[1].transcript = session.transcript.render()
            self.batch.finished(*self.last)
            self.last = None


def _unexpected(session: SMTPSession, exc: Exception) -> SMTPFailure:
    return SMTPFailure(
        f"unexpected error while sending: {exc!r}",
        outcome=Outcome.UNKNOWN if session.body_in_flight else Outcome.TRANSIENT_FAILURE,
        provider_level=False,
    )


async def send_batch(
    settings: ServerSettings,
    jobs: list[Job],
    *,
    max_connections: int = 1,
    max_messages_per_connection: int = 100,
    reserve_slot: Callable[[], Awaitable[float]] | None = None,
    on_result: Callable[[Job, AttemptResult], None] | None = None,
    refill: Callable[[], Awaitable[list[Job]]] | None = None,
    sessions: SessionKeeper | None = None,
) -> BatchOutcome:
    batch = _Batch(
        settings,
        jobs,
        max_messages_per_connection=max_messages_per_connection,
        least=2 * max(1, max_connections),
        reserve_slot=reserve_slot,
        on_result=on_result,
        refill=refill,
        sessions=sessions,
    )
    connections = max_connections if refill is not None else min(max_connections, len(jobs))
    return await batch.run(connections)
