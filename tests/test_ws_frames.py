"""What WsClient makes of the frames a server sends: fragments, limits, bad text, close codes, backpressure.

Each test runs a plain WebSocket server (the ``websockets`` library) on
127.0.0.1 that sends what the case needs, and a WsClient reading it.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from websockets.asyncio.server import ServerConnection, serve

from streamer.connection.ws import MAX_QUEUED_FRAMES, WsClient, WsOptions

Handler = Callable[[ServerConnection], Awaitable[None]]


async def _read(handler: Handler, *, options: WsOptions | None = None,
                frame_delay: float = 0.0, stop_after: int | None = None) -> tuple[list, list[str], WsClient, list]:
    """Frames received and disconnect reasons of one client against ``handler``'s server.

    Stops at the first disconnect, or after ``stop_after`` frames. The last
    list holds the frame queue of each connection (seen from ``on_frame``).
    """
    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        frames: list = []
        reasons: list[str] = []
        queues: list = []
        done = asyncio.Event()

        async def on_frame(frame, ts):
            frames.append(frame)
            if client.queue is not None and (not queues or queues[-1] is not client.queue):
                queues.append(client.queue)
            if frame_delay:
                await asyncio.sleep(frame_delay)
            if stop_after is not None and len(frames) >= stop_after:
                done.set()

        async def on_connect(_client):
            return None

        async def on_disconnect(_client, reason):
            reasons.append(reason)
            done.set()

        client = WsClient("test", lambda: f"ws://127.0.0.1:{port}/", on_frame=on_frame, on_connect=on_connect,
                          on_disconnect=on_disconnect, options=options or WsOptions(backoff_base=5.0))
        task = asyncio.create_task(client.run())
        await asyncio.wait_for(done.wait(), 30)
        await client.stop()
        await asyncio.wait_for(task, 10)
        return frames, reasons, client, queues


async def test_text_and_binary_frames_arrive_as_sent_and_in_order():
    async def handler(ws):
        await ws.send('{"n": 1}')
        await ws.send(b"\x00\x01binary")
        await ws.send('{"n": "é"}')
        await ws.close(4001, "bye")

    frames, reasons, _, _ = await _read(handler)
    assert frames == ['{"n": 1}', b"\x00\x01binary", '{"n": "é"}']
    assert reasons == ["closed: 4001"]


async def test_a_fragmented_message_is_delivered_whole():
    async def handler(ws):
        await ws.send(['{"part": ', '"one', ' two"}'])  # one text message in three frames
        await ws.send([b"ab", b"cd"])
        await ws.send('{"after": true}')
        await ws.close()

    frames, reasons, _, _ = await _read(handler)
    assert frames == ['{"part": "one two"}', b"abcd", '{"after": true}']
    assert reasons == ["closed: 1000"]


async def test_frames_over_the_transport_cap_close_the_connection_as_too_big():
    options = WsOptions(transport_max_bytes=1_000, backoff_base=5.0)

    async def one_big_frame(ws):
        await ws.send('"small"')
        await ws.send("x" * 2_000)
        await ws.wait_closed()

    frames, reasons, _, _ = await _read(one_big_frame, options=options)
    assert frames == ['"small"']
    assert reasons == ["closed: frame too big"]

    async def big_in_fragments(ws):
        # Every frame is under the cap; the message they make is not.
        await ws.send(["y" * 600, "y" * 600, "y" * 600])
        await ws.wait_closed()

    frames, reasons, _, _ = await _read(big_in_fragments, options=options)
    assert frames == []
    assert reasons == ["closed: frame too big"]


async def test_a_text_frame_that_is_not_utf8_closes_the_connection_with_the_reason():
    async def handler(ws):
        await ws.send('"before"')
        async with ws.send_context():
            ws.protocol.send_text(b"\xff\xfe not utf-8")  # the sans-I/O layer does not check what it sends
        await ws.wait_closed()

    frames, reasons, _, _ = await _read(handler)
    assert frames == ['"before"']
    assert reasons == ["closed: invalid UTF-8 in a text frame"]


async def test_a_slow_consumer_stops_reading_the_socket_and_loses_nothing():
    count = 3 * MAX_QUEUED_FRAMES

    async def handler(ws):
        for i in range(count):
            await ws.send(f'{{"i": {i}}}')
        await ws.wait_closed()

    # Each frame holds its consumer for a moment, so the server's frames pile up.
    frames, _, _, queues = await _read(handler, frame_delay=0.0005, stop_after=count)
    assert frames == [f'{{"i": {i}}}' for i in range(count)]
    assert queues and queues[0].pauses >= 1
    assert not queues[0].paused or len(queues[0].frames) > 0


async def test_a_close_frame_without_a_code_is_reported_and_answered_with_a_sendable_one():
    from websockets.frames import Frame, Opcode

    answers = []

    async def handler(ws):
        await ws.send('"last"')
        async with ws.send_context():
            ws.protocol.send_frame(Frame(Opcode.CLOSE, b""))  # a close frame may carry no status code
        await ws.wait_closed()
        answers.append(ws.protocol.close_rcvd)

    frames, reasons, _, _ = await _read(handler)
    assert frames == ['"last"']
    assert reasons == ["closed: 1005"]  # "no status received": reported, never sent back
    assert answers and answers[0] is not None and answers[0].code == 1000
