"""One provider's batch of claimed messages, sent while their attempts are being stored.

The coroutine here runs the connections (:func:`~.pool.send_batch`) and everything that
keeps them going: durable body-start marks committed ahead of the bodies, results stored
in chunks while sending goes on, more messages claimed while the connections stay open,
leases renewed. Whatever it needs from the database it asks of a :class:`Store`. No Django
here: the same coroutine runs beside the database thread (``bridge.SyncBridge``) or in a
process of its own (``smtp.helper``), where the store's calls cross a pipe.

Messages are known by their keys (the message ids): the database side keeps the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from .keeper import SessionKeeper
from .pool import BatchOutcome, Job, send_batch
from .transport import AttemptResult, Envelope, ServerSettings

#: How many messages one body-start commit covers (see BodyMarker). After a crash, up to
#: about two windows of messages marked but never sent count as ``unknown``.
BODY_MARK_WINDOW = 64
#: Attempts stored per transaction while a batch is still being sent…
RECORD_CHUNK = 200
#: …or as soon as the oldest unstored one is this old, whichever comes first.
RECORD_WITHIN_SECONDS = 1.0


class Store(Protocol):
    """The database side of a batch, as the sending side sees it."""

    async def claim_more(self) -> list[tuple[int, Envelope]]:
        """The next claimed messages of this stream; empty when none is due."""

    async def record(self, chunk: list[tuple[int, AttemptResult]]) -> None:
        """Store these attempts and move their messages on, in one transaction."""

    async def mark(self, keys: list[int]) -> None:
        """Commit that these messages' bodies may go out (must be durable on return)."""

    async def reserve(self) -> float:
        """A rate-limit slot: seconds to wait before the next MAIL."""

    async def renew(self) -> None:
        """Extend the leases of the messages claimed and not yet recorded."""


#: Store calls served ahead of the others: those a connection waits for, and lease
#: renewals, which must not wait behind a queue of recordings while the leases run out.
URGENT_CALLS = frozenset({"mark", "reserve", "renew"})


class CallingStore:
    """A :class:`Store` run elsewhere: each method becomes ``await call(name, args)``."""

    def __init__(self, call: Callable[[str, tuple[Any, ...]], Awaitable[Any]]):
        self._call = call

    async def claim_more(self) -> list[tuple[int, Envelope]]:
        return await self._call("claim_more", ())

    async def record(self, chunk: list[tuple[int, AttemptResult]]) -> None:
        await self._call("record", (chunk,))

    async def mark(self, keys: list[int]) -> None:
        await self._call("mark", (keys,))

    async def reserve(self) -> float:
        return await self._call("reserve", ())

    async def renew(self) -> None:
        await self._call("renew", ())


@dataclass(frozen=True)
class StreamPlan:
    max_connections: int = 1
    max_messages_per_connection: int = 100
    mark_window: int = BODY_MARK_WINDOW
    #: Each MAIL waits for a slot from :meth:`Store.reserve`.
    rate_limited: bool = False
    #: Claim more (:meth:`Store.claim_more`) while sending, for this long; 0: just this batch.
    stream_seconds: float = 0.0
    #: Stop claiming while this many results wait to be stored.
    backlog_limit: int = 2 * RECORD_CHUNK
    lease_renew_seconds: float = 100.0
    record_chunk: int = RECORD_CHUNK
    record_within_seconds: float = RECORD_WITHIN_SECONDS
    #: Store whatever is ready as soon as the last chunk is stored (up to ``record_chunk``)
    #: instead of waiting for a full chunk: for a store in a process of its own, which is
    #: idle otherwise.
    record_eagerly: bool = False


class BodyMarker:
    """Commits the body-start mark before a body goes out, for a window of messages at once.

    The mark must be durable before the bytes leave; one commit per message would cost a
    round trip each. Marking the next few messages of the batch together is cheaper, and
    errs on the safe side: after a crash, a marked message that was never sent is recorded
    as ``unknown`` (possibly delivered) and retried, never silently dropped. The next window
    is committed in the background while half of the current one is still to be sent, so
    the connections seldom wait for a mark.
    """

    def __init__(
        self,
        commit: Callable[[list[int]], Awaitable[None]],
        order: Iterable[int] = (),
        window: int = BODY_MARK_WINDOW,
    ):
        self.commit = commit
        self.window = window
        self.queue: deque[int] = deque()  # in sending order; may hold keys already marked
        self.unmarked: set[int] = set()
        self.marked_unsent: set[int] = set()  # committed or being committed, body not yet due
        # Windows being committed right now: a message in one of them waits for that commit
        # before its body goes out.
        self.committing: dict[int, asyncio.Future[None]] = {}
        self.commits: set[asyncio.Task[None]] = set()
        self.add(order)

    def add(self, keys: Iterable[int]) -> None:
        for key in keys:
            self.queue.append(key)
            self.unmarked.add(key)

    def before_body_of(self, key: int) -> Callable[[], Awaitable[None]]:
        async def mark() -> None:
            self.marked_unsent.discard(key)
            durable = self.committing.get(key)
            if durable is None and key in self.unmarked:
                durable = self._commit_window(first=key)
            if len(self.marked_unsent) < self.window:
                self._commit_window()  # the next window, ahead of need
            if durable is not None:
                await asyncio.shield(durable)  # raises if that commit failed
            # Otherwise it was marked with an earlier window (or an earlier recipient chunk).

        return mark

    def _commit_window(self, first: int | None = None) -> asyncio.Future[None] | None:
        keys = []
        if first is not None:
            self.unmarked.discard(first)
            keys.append(first)
        while len(keys) < self.window and self.queue:
            key = self.queue.popleft()
            if key in self.unmarked:
                self.unmarked.discard(key)
                keys.append(key)
        if not keys:
            return None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_consume_error)
        for key in keys:
            self.committing[key] = done
        self.marked_unsent.update(key for key in keys if key != first)
        task = asyncio.ensure_future(self._commit(keys, done))
        self.commits.add(task)
        task.add_done_callback(self.commits.discard)
        return done

    async def _commit(self, keys: list[int], done: asyncio.Future[None]) -> None:
        try:
            await self.commit(keys)
        except BaseException as exc:
            # Not known to be durable: no body of this window may go out. The failed future
            # stays, so every later caller for these messages raises too.
            done.set_exception(RuntimeError(f"marking bodies as started failed: {exc!r}"))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        done.set_result(None)
        for key in keys:
            del self.committing[key]

    def cancel(self) -> None:
        """Stop the commits still running (their messages will not be sent now)."""
        for task in list(self.commits):
            task.cancel()


def _consume_error(future: asyncio.Future[None]) -> None:
    # Every waiter sees the error; nobody need be left to "retrieve" it.
    if not future.cancelled():
        future.exception()


async def run_stream(
    server: ServerSettings,
    messages: list[tuple[int, Envelope]],
    plan: StreamPlan,
    store: Store,
    sessions: SessionKeeper | None = None,
) -> BatchOutcome:
    """Send these messages (and, with ``plan.stream_seconds``, those claimed meanwhile);
    every result is handed to ``store.record`` before this returns. ``sessions`` keeps the
    connections open for the next batch (on its own event loop)."""
    deadline = time.monotonic() + plan.stream_seconds
    marker = BodyMarker(store.mark, window=plan.mark_window)

    def jobs_for(batch: list[tuple[int, Envelope]]) -> list[Job]:
        marker.add(key for key, _ in batch)
        return [Job(key, envelope, marker.before_body_of(key)) for key, envelope in batch]

    ready: list[tuple[int, AttemptResult]] = []
    wake = asyncio.Event()
    stored = asyncio.Event()  # set after each chunk is recorded
    sending_done = False

    refill = None
    if plan.stream_seconds > 0:

        async def refill() -> list[Job]:
            # Claim more only while recording keeps up with sending: a long stream then
            # holds a bounded number of messages in memory.
            while len(ready) >= plan.backlog_limit and not storing.done():
                stored.clear()
                await stored.wait()
            if time.monotonic() >= deadline or storing.done():
                return []  # (a failed recorder ends the stream; its error is raised)
            return jobs_for(await store.claim_more())

    def on_result(job: Job, result: AttemptResult) -> None:
        ready.append((job.key, result))
        if plan.record_eagerly or len(ready) >= plan.record_chunk:
            wake.set()

    async def recorder() -> None:
        try:
            while True:
                try:
                    await asyncio.wait_for(wake.wait(), plan.record_within_seconds)
                    flush = sending_done or plan.record_eagerly
                except TimeoutError:
                    flush = True  # a slow batch: store what is ready (each message's status)
                wake.clear()
                # Full chunks only while sending goes on: results that arrive during one
                # chunk's transaction wait for the next full one, rather than going out a
                # few at a time, each with a transaction's fixed cost.
                while len(ready) >= plan.record_chunk or (flush and ready):
                    chunk = ready[: plan.record_chunk]
                    del ready[: len(chunk)]
                    await store.record(chunk)
                    stored.set()
                if sending_done and not ready:
                    return
        finally:
            stored.set()  # a refill waiting for room must not wait for a dead recorder

    async def keep_leases() -> None:
        # A rate-limited batch can outlast one lease. A worker that dies stops renewing,
        # and its leases run out. One failed renewal must not end the renewals: the next
        # one still comes in time.
        while True:
            await asyncio.sleep(plan.lease_renew_seconds)
            with contextlib.suppress(Exception):
                await store.renew()

    renewer = asyncio.create_task(keep_leases())
    storing = asyncio.create_task(recorder())
    try:
        outcome = await send_batch(
            server,
            jobs_for(messages),
            max_connections=plan.max_connections,
            max_messages_per_connection=plan.max_messages_per_connection,
            reserve_slot=store.reserve if plan.rate_limited else None,
            on_result=on_result,
            refill=refill,
            sessions=sessions,
        )
    finally:
        sending_done = True
        marker.cancel()
        wake.set()
        await storing
        renewer.cancel()
    return outcome
