"""Run async SMTP work while the calling thread keeps doing the database work.

Django's ORM is synchronous and tied to its thread's connection (and transaction). The
coroutine runs in a helper thread with its own event loop; whenever it needs the database
it asks through :meth:`SyncBridge.call`, and the calling thread runs that function itself.
So every query happens on the caller's connection, inside the caller's transaction, and no
connection is left behind in a stray thread.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
_URGENT, _NORMAL = 0, 1


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class SyncBridge:
    def __init__(self) -> None:
        # (priority, arrival, request): urgent calls first, otherwise in arrival order.
        self._requests: queue.PriorityQueue[tuple[int, int, tuple[Any, ...] | None]] = (
            queue.PriorityQueue()
        )
        self._arrivals = itertools.count()

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``function`` in the thread that called :meth:`run`; await its result."""
        return await self._call(_NORMAL, function, args, kwargs)

    async def call_urgent(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like :meth:`call`, ahead of the calls already waiting (for a caller that holds
        up a connection while it waits)."""
        return await self._call(_URGENT, function, args, kwargs)

    async def _call(
        self, priority: int, function: Callable[..., T], args: tuple, kwargs: dict
    ) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._requests.put((priority, next(self._arrivals), (function, args, kwargs, loop, future)))
        return await future

    def run(
        self,
        make_coroutine: Callable[[SyncBridge], Coroutine[Any, Any, T]],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> T:
        """Run the coroutine in a thread of its own (or on ``loop``, a loop already running
        in another thread), serving its calls here until it ends."""
        box: dict[str, Any] = {}

        async def target() -> None:
            try:
                box["value"] = await make_coroutine(self)
            except BaseException as exc:  # handed back to the calling thread
                box["error"] = exc
            finally:
                self._requests.put((_NORMAL, next(self._arrivals), None))

        thread = None
        if loop is None:
            thread = threading.Thread(
                target=lambda: asyncio.run(target()), name="reliable-mail-smtp", daemon=True
            )
            thread.start()
        else:
            asyncio.run_coroutine_threadsafe(target(), loop)
        while (request := self._requests.get()[2]) is not None:
            function, args, kwargs, loop, future = request
            if future.cancelled():  # its caller stopped waiting (a lease renewer at the end)
                continue
            try:
                value, error = function(*args, **kwargs), None
            except Exception as exc:
                value, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, value, error)
            except RuntimeError:
                # The coroutine side has already finished and closed its loop: the caller was
                # cancelled after asking, and nobody waits for this answer any more.
                pass
        if thread is not None:
            thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]
