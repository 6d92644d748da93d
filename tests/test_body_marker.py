"""The durable "body started" mark: every message marked once, before its body, in windows."""

import asyncio

from django_reliable_mail.smtp.stream import BodyMarker


class RecordingBridge:
    def __init__(self):
        self.calls = []

    async def commit(self, ids):
        self.calls.append(list(ids))


def test_each_message_is_marked_once_even_when_sent_out_of_order():
    bridge = RecordingBridge()
    marker = BodyMarker(bridge.commit, [1, 2, 3, 4, 5, 6], window=3)

    async def send(*message_ids):
        for pk in message_ids:
            await marker.before_body_of(pk)()

    asyncio.run(send(5, 1, 3, 5, 2))  # a connection ran ahead; a message sent twice
    marker.add([7])  # a streamed batch adds more
    asyncio.run(send(4, 6, 7))
    assert bridge.calls == [[5, 1, 2], [3, 4, 6], [7]]
    marked = [pk for call in bridge.calls for pk in call]
    assert sorted(marked) == [1, 2, 3, 4, 5, 6, 7]  # nothing twice, nothing left out


class SlowBridge:
    """Commits only when told to, and can be told to fail."""

    def __init__(self):
        self.calls = []
        self.release = None
        self.error = None

    async def commit(self, ids):
        self.calls.append(list(ids))
        await self.release.wait()
        if self.error:
            raise self.error


def test_a_body_in_a_window_being_committed_waits_for_that_commit():
    bridge = SlowBridge()
    marker = BodyMarker(bridge.commit, [1, 2, 3], window=3)
    sent = []

    async def body(pk):
        await marker.before_body_of(pk)()
        sent.append(pk)

    async def main():
        bridge.release = asyncio.Event()
        first = asyncio.create_task(body(1))
        await asyncio.sleep(0)  # message 1 starts committing the window [1, 2, 3]
        second = asyncio.create_task(body(2))  # another connection, same window
        for _ in range(5):
            await asyncio.sleep(0)
        assert sent == []  # neither body may go out before the window is durable
        bridge.release.set()
        await asyncio.gather(first, second)

    asyncio.run(main())
    assert sorted(sent) == [1, 2] and bridge.calls == [[1, 2, 3]]


def test_when_the_commit_fails_no_body_of_its_window_goes_out():
    bridge = SlowBridge()
    marker = BodyMarker(bridge.commit, [1, 2, 3], window=3)
    sent, errors = [], []

    async def body(pk):
        try:
            await marker.before_body_of(pk)()
        except Exception as exc:
            errors.append((pk, type(exc).__name__))
            return
        sent.append(pk)

    async def main():
        bridge.release = asyncio.Event()
        bridge.error = ConnectionError("database went away")
        first = asyncio.create_task(body(1))
        await asyncio.sleep(0)
        second = asyncio.create_task(body(2))
        await asyncio.sleep(0)
        bridge.release.set()
        await asyncio.gather(first, second)
        await body(3)  # later, same window: still refused

    asyncio.run(main())
    assert sent == []
    assert errors == [(1, "RuntimeError"), (2, "RuntimeError"), (3, "RuntimeError")]


def test_a_whole_window_stays_marked_ahead_of_the_bodies():
    # The database side may be busy with a claim or a recording for a while; the bodies
    # already marked let the connections go on meanwhile.
    bridge = RecordingBridge()
    marker = BodyMarker(bridge.commit, list(range(1, 13)), window=4)

    async def send(*message_ids):
        for pk in message_ids:
            await marker.before_body_of(pk)()
        await asyncio.gather(*marker.commits)

    asyncio.run(send(1))
    assert bridge.calls == [[1, 2, 3, 4], [5, 6, 7, 8]]
    asyncio.run(send(2, 3, 4))  # a full window (5-8) is still marked ahead
    assert len(bridge.calls) == 2
    asyncio.run(send(5))  # less than a window ahead: the next one goes
    assert bridge.calls[2] == [9, 10, 11, 12]
    asyncio.run(send(6, 7, 8, 9, 10, 11, 12))
    assert len(bridge.calls) == 3


def test_under_a_rate_limit_a_window_is_about_a_second_of_sends():
    from django_reliable_mail.conf import RateLimit
    from django_reliable_mail.delivery.sending import BODY_MARK_WINDOW, _mark_window

    assert _mark_window(None) == BODY_MARK_WINDOW
    assert _mark_window(RateLimit(20, 1)) == 20
    assert _mark_window(RateLimit(10_000, 1)) == BODY_MARK_WINDOW
    assert _mark_window(RateLimit(30, 60)) == 1
