"""The durable "body started" mark: every message marked once, before its body, in windows."""

import asyncio

from django_reliable_mail.delivery.sending import _BodyMarker


class RecordingBridge:
    def __init__(self):
        self.calls = []

    async def call(self, function, ids):
        self.calls.append(list(ids))


def test_each_message_is_marked_once_even_when_sent_out_of_order():
    bridge = RecordingBridge()
    marker = _BodyMarker(bridge, [1, 2, 3, 4, 5, 6], window=3)

    async def send(*message_ids):
        for pk in message_ids:
            await marker.before_body_of(pk)()

    asyncio.run(send(5, 1, 3, 5, 2))  # a connection ran ahead; a message sent twice
    marker.add([7])  # a streamed batch adds more
    asyncio.run(send(4, 6, 7))
    assert bridge.calls == [[5, 1, 2], [3, 4, 6], [7]]
    marked = [pk for call in bridge.calls for pk in call]
    assert sorted(marked) == [1, 2, 3, 4, 5, 6, 7]  # nothing twice, nothing left out
