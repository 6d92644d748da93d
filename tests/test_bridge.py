"""The bridge between the SMTP event loop and the database thread."""

import asyncio
import time

from django_reliable_mail.bridge import SyncBridge


def test_calls_run_in_the_calling_thread_and_errors_come_back():
    import threading

    async def main(bridge):
        thread = await bridge.call(lambda: threading.current_thread())
        try:
            await bridge.call(lambda: 1 / 0)
        except ZeroDivisionError:
            return thread

    assert SyncBridge().run(main) is threading.current_thread()


def test_a_call_whose_caller_was_cancelled_is_dropped_after_the_loop_ends():
    ran = []

    async def main(bridge):
        busy = asyncio.ensure_future(bridge.call(time.sleep, 0.2))  # the database thread busy
        await asyncio.sleep(0.02)
        late = asyncio.ensure_future(bridge.call(ran.append, "late"))  # queued behind it
        await asyncio.sleep(0.02)
        busy.cancel()  # as the lease renewer is cancelled when a batch ends
        late.cancel()
        return "finished"

    assert SyncBridge().run(main) == "finished"  # no "Event loop is closed"
    assert ran == []  # nobody waits for it: not run at all


def test_urgent_calls_go_ahead_of_those_already_waiting():
    order = []

    async def main(bridge):
        busy = asyncio.ensure_future(bridge.call(time.sleep, 0.1))  # the database thread busy
        await asyncio.sleep(0.02)
        waiting = [asyncio.ensure_future(bridge.call(order.append, f"normal {i}")) for i in (1, 2)]
        await asyncio.sleep(0)
        urgent = asyncio.ensure_future(bridge.call_urgent(order.append, "urgent"))
        await asyncio.gather(busy, *waiting, urgent)

    SyncBridge().run(main)
    assert order == ["urgent", "normal 1", "normal 2"]
