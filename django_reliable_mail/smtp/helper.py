"""The SMTP side of a worker's batches, in a process of the worker's own.

Python runs one thread at a time, so a worker that stores attempts and speaks SMTP in one
process uses one core. Here the SMTP side (:func:`~.stream.run_stream`: connections,
pipelining, transcripts, the order of body-start marks) runs in a child process, and the
worker's process keeps only the database work, which it serves on request: two cores.

The two talk over the child's stdin and stdout, in frames (a 4-byte length, then a pickle):

- worker → helper: ``("batch", server, messages, plan)``; ``("reply", id, value, error)``;
- helper → worker: ``("ready",)`` once it has started; ``("call", id, name, args)`` for a
  :class:`~.stream.Store` method;
  ``("done", connections, untouched_keys)`` or ``("failed", error)`` at the end of a batch.

Crash safety is unchanged: a body leaves only after the worker has committed its mark, and
results count only once the worker has stored them. When the worker dies, its end of the
pipe closes and the helper exits at once, mid-body included (a message cut before its final
dot is not delivered). When the helper dies, the worker is told, and returns the batch's
messages as a crash would. No Django here.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO

from .stream import URGENT_CALLS, CallingStore, StreamPlan, run_stream
from .transport import Envelope, ServerSettings

_LENGTH = struct.Struct(">I")
_URGENT, _NORMAL, _LAST = 0, 1, 2


class HelperProcessError(RuntimeError):
    """The SMTP helper process failed or stopped in the middle of a batch."""


class StoreError(RuntimeError):
    """A store call failed on the worker's side (the worker keeps the real exception)."""


def _frame(value: Any) -> bytes:
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


def _read_frame(stream: BinaryIO) -> Any | None:
    """The next frame from a blocking stream; None at its end."""
    head = _read_exactly(stream, _LENGTH.size)
    if head is None:
        return None
    body = _read_exactly(stream, _LENGTH.unpack(head)[0])
    return None if body is None else pickle.loads(body)


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# -- the worker's side -----------------------------------------------------------------------


class SMTPHelper:
    """One helper process, serving one batch at a time for the process that started it."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parent.parent.parent)
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, path]))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            env=env,
        )
        #: Held by the thread whose batch it is sending: one batch at a time.
        self.lock = threading.Lock()
        self._frames: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._arrivals = itertools.count()
        self._broken = False
        self._batch_open = False
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, name="reliable-mail-helper", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return not self._broken and self.process.poll() is None

    def _read(self) -> None:
        # Frames are taken off the pipe as they come (the helper never waits to write), and
        # urgent calls (a connection waits for them) are served ahead of the rest.
        assert self.process.stdout is not None
        try:
            while (frame := _read_frame(self.process.stdout)) is not None:
                if frame[0] == "ready":
                    self._ready.set()
                    continue
                urgent = frame[0] == "call" and frame[2] in URGENT_CALLS
                self._frames.put((_URGENT if urgent else _NORMAL, next(self._arrivals), frame))
        except Exception:  # a torn frame: the helper died mid-write
            pass
        finally:
            self._frames.put((_LAST, next(self._arrivals), None))

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Wait until the helper has started up (a batch need not: it is read once it has)."""
        return self._ready.wait(timeout)

    def _send(self, value: Any) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(_frame(value))
        except OSError as exc:
            self._broken = True
            raise HelperProcessError(f"the SMTP helper process is gone ({exc})") from exc

    def run(
        self,
        server: ServerSettings,
        messages: list[tuple[int, Envelope]],
        plan: StreamPlan,
        store: Any,
    ) -> tuple[int, list[int]]:
        """Send a batch through the helper; ``store`` (a synchronous object with the
        :class:`~.stream.Store` methods) runs here, in the calling thread. Returns the
        number of connections opened and the keys of the messages never tried."""
        self._batch_open = True
        try:
            return self._run(server, messages, plan, store)
        finally:
            if self._batch_open:
                # Stopped half-way (an error here, or the task's timeout): the helper may
                # still be sending and its state is unknown; it must not go on.
                self.kill()

    def _run(
        self, server: ServerSettings, messages: list[tuple[int, Envelope]], plan: StreamPlan, store
    ) -> tuple[int, list[int]]:
        self._send(("batch", server, messages, plan))
        errors: list[Exception] = []
        while True:
            frame = self._frames.get()[2]
            if frame is None:
                raise self._stopped()
            kind = frame[0]
            if kind == "call":
                reply = _answer(store, frame, errors)
                try:
                    self._send(reply)
                except HelperProcessError as exc:
                    # It died while this call ran: the same stop as a closed output.
                    raise self._stopped() from exc
            elif kind == "done":
                self._batch_open = False
                return frame[1], frame[2]
            else:
                # The batch failed. Its connections may still be running in the helper (an
                # exception from one does not stop the others), and would call in about a
                # batch that is over: the helper is stopped (``run``), a new one starts.
                if errors:
                    raise errors[0]
                raise HelperProcessError(f"the SMTP helper failed: {frame[1]}")

    def _stopped(self) -> HelperProcessError:
        self._broken = True
        code = self.process.wait()
        return HelperProcessError(
            f"the SMTP helper process stopped in the middle of a batch (exit code {code})"
        )

    def kill(self) -> None:
        self._broken = True
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                pipe.close()  # type: ignore[union-attr]
            except OSError:
                pass

    def close(self) -> None:
        """Let the helper finish (it exits when its input closes)."""
        self._broken = True
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._close_pipes()


def _answer(store: Any, frame: tuple[Any, ...], errors: list[Exception]) -> tuple[Any, ...]:
    """Run one store call; the reply frame for it."""
    _, call_id, name, args = frame
    try:
        return ("reply", call_id, getattr(store, name)(*args), None)
    except Exception as exc:
        errors.append(exc)  # the first one is raised here once the batch has ended
        return ("reply", call_id, None, f"{type(exc).__name__}: {exc}")


_shared: SMTPHelper | None = None
_shared_lock = threading.Lock()


def shared_helper() -> SMTPHelper:
    """This process's helper, started on first use and again after it died."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.alive:
            if _shared is not None:
                _shared.kill()
            _shared = SMTPHelper()
        return _shared


@atexit.register
def _close_shared() -> None:
    if _shared is not None:
        _shared.close()


def _forget_after_fork() -> None:
    # A forked child (a django-q2 worker) must not share its parent's helper and pipes.
    global _shared, _shared_lock
    _shared, _shared_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


# -- the helper's side -----------------------------------------------------------------------


def main() -> None:
    # The pipe to the worker is the channel: anything printed goes to stderr instead.
    channel = os.dup(1)
    os.dup2(2, 1)
    asyncio.run(_serve(channel))


async def _serve(channel: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    stdin = os.fdopen(0, "rb", buffering=0)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    replies: dict[int, asyncio.Future[Any]] = {}
    call_ids = itertools.count()
    batches: set[asyncio.Task[None]] = set()

    def send(value: Any) -> None:
        data = memoryview(_frame(value))
        while data:  # blocking: the worker reads all the time, in a thread of its own
            data = data[os.write(channel, data) :]

    send(("ready",))

    async def call(name: str, args: tuple[Any, ...]) -> Any:
        call_id = next(call_ids)
        replies[call_id] = answer = loop.create_future()
        send(("call", call_id, name, args))
        return await answer

    async def batch(server: ServerSettings, messages, plan: StreamPlan) -> None:
        try:
            outcome = await run_stream(server, messages, plan, CallingStore(call))
        except Exception as exc:
            send(("failed", f"{type(exc).__name__}: {exc}"))
        else:
            send(("done", outcome.connections, [job.key for job in outcome.untouched]))

    while True:
        try:
            head = await reader.readexactly(_LENGTH.size)
            frame = pickle.loads(await reader.readexactly(_LENGTH.unpack(head)[0]))
        except asyncio.IncompleteReadError:
            # The worker is gone (or done with us): stop now, whatever is in flight. Only
            # bodies whose marks the worker committed can have gone out.
            os._exit(0)
        kind = frame[0]
        if kind == "batch":
            task = asyncio.create_task(batch(*frame[1:]))
            batches.add(task)
            task.add_done_callback(batches.discard)
        elif kind == "reply":
            _, call_id, value, error = frame
            answer = replies.pop(call_id)
            if error is not None:
                answer.set_exception(StoreError(error))
            else:
                answer.set_result(value)


if __name__ == "__main__":
    main()
