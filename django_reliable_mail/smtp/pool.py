"""Send a batch of messages for one provider over a few reused connections.

Up to ``max_connections`` sessions run side by side (asyncio); each takes the next message,
sends it, and reconnects after ``max_messages_per_connection`` messages, at the server's
MAILMAX, or when the connection breaks. While a body goes out, a session takes its next
message already, so that message's commands can follow the body (PIPELINING). A
provider-level failure, or a connection that cannot be set up, stops the whole batch: the
messages not yet tried come back untouched.

With ``refill``, the batch is a stream: when few messages are left, the next ones are asked
for while the connections keep sending, so claiming overlaps sending and the connections
stay open from one batch to the next.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .transport import (
    AttemptResult,
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


async def send_batch(
    settings: ServerSettings,
    jobs: list[Job],
    *,
    max_connections: int = 1,
    max_messages_per_connection: int = 100,
    reserve_slot: Callable[[], Awaitable[float]] | None = None,
    on_result: Callable[[Job, AttemptResult], None] | None = None,
    refill: Callable[[], Awaitable[list[Job]]] | None = None,
) -> BatchOutcome:
    queue: deque[Job] = deque(jobs)
    outcome = BatchOutcome(results=[], untouched=[])
    provider_failed = asyncio.Event()
    # Ask for more while a quarter of the last batch is left (a claim takes a while: a
    # database round trip or a wait behind the recording), and while each connection still
    # has at least two messages to send.
    least = 2 * max(1, max_connections)
    stream: dict[str, Any] = {
        "task": None,
        "done": refill is None,
        "error": None,
        "low_water": max(least, len(jobs) // 4),
    }

    async def take_more() -> None:
        assert refill is not None
        try:
            more = await refill()
        except Exception as exc:  # re-raised once the connections have finished
            stream["error"], more = exc, []
        if more and not provider_failed.is_set():
            queue.extend(more)
            stream["low_water"] = max(least, len(more) // 4)
        elif more:
            outcome.untouched.extend(more)
        else:
            stream["done"] = True
        stream["task"] = None

    def pop() -> Job | None:
        """The next job if one is queued; asks for more first when few are left."""
        if not stream["done"] and stream["task"] is None and len(queue) <= stream["low_water"]:
            stream["task"] = asyncio.ensure_future(take_more())
        return queue.popleft() if queue else None

    async def next_job() -> Job | None:
        while not provider_failed.is_set():
            if (job := pop()) is not None:
                return job
            if stream["done"]:
                return None
            await asyncio.shield(stream["task"])
        return None

    def finished(job: Job, result: AttemptResult) -> None:
        if on_result is not None:
            on_result(job, result)  # the caller keeps what it needs: a stream has no end
        else:
            outcome.results.append((job, result))

    async def run_connection() -> None:
        session: SMTPSession | None = None
        # A connection's latest result is handed on only when the next message starts or
        # the connection closes: the QUIT belongs in the last message's transcript.
        last: tuple[Job, AttemptResult] | None = None
        # Taken from the queue while the current body goes out, to pipeline its commands.
        reserved: Job | None = None

        def take_next() -> Envelope | None:
            nonlocal reserved
            if (
                reserve_slot is not None  # each MAIL waits for its rate-limit slot
                or provider_failed.is_set()
                or session is None
                or not session.can_take(max_messages_per_connection)
            ):
                return None
            reserved = pop()
            return reserved.envelope if reserved is not None else None

        async def close() -> None:
            nonlocal last
            assert session is not None
            await session.close()
            if last is not None:
                last[1].transcript = session.transcript.render()
                finished(*last)
                last = None

        try:
            while True:
                if reserved is not None:
                    if provider_failed.is_set():
                        break
                    job, reserved = reserved, None
                elif (job := await next_job()) is None:
                    break
                if session is None or not session.can_take(max_messages_per_connection):
                    if session is not None:
                        await close()
                    session = SMTPSession(settings)
                    outcome.connections += 1
                    try:
                        await session.open()
                    except SMTPFailure as failure:
                        await session.close()
                        finished(job, failure_result(session, job.envelope, failure))
                        session = None
                        # A connection that cannot be set up says nothing about the message,
                        # and the next one would most likely fail alike: stop the batch
                        # rather than open one connection per message.
                        provider_failed.set()
                        continue
                if reserve_slot is not None:
                    wait = await reserve_slot()
                    if wait > 0:
                        await asyncio.sleep(wait)
                result = await session.send(
                    job.envelope, before_body=job.before_body, next_envelope=take_next
                )
                if last is not None:
                    finished(*last)
                last = (job, result)
                if result.provider_level or result.pause_provider:
                    provider_failed.set()
                if not session.is_open:
                    await close()
                    session = None
        finally:
            if reserved is not None:  # never sent: back for another connection or untouched
                queue.appendleft(reserved)
            if session is not None:
                await close()

    connections = max_connections if refill is not None else min(max_connections, len(jobs))
    await asyncio.gather(*(run_connection() for _ in range(max(1, connections))))
    if stream["task"] is not None:  # a refill still on its way when the provider failed
        await stream["task"]
    outcome.untouched.extend(queue)
    if stream["error"] is not None:
        raise stream["error"]
    return outcome
