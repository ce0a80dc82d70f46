"""WsClient's receive loop against a local WebSocket server: how it shares the event loop."""

from __future__ import annotations

import asyncio
import time

from websockets.asyncio.server import serve

from streamer.connection.ws import WsClient

FRAMES = 40


async def _burst_server(frames: int):
    """A server that sends ``frames`` frames at once to each connection, then waits."""

    async def handler(ws):
        for i in range(frames):
            await ws.send(f'{{"n": {i}}}')
        await ws.wait_closed()

    return await serve(handler, "127.0.0.1", 0)


def _busy(seconds: float) -> None:
    """Hold the event loop, as processing a long frame does."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def _run_client(frame_seconds: float, turn_hint=None) -> list[int]:
    """Frames handled so far, as seen by another task each time it gets to run."""
    server = await _burst_server(FRAMES)
    port = server.sockets[0].getsockname()[1]
    done = asyncio.Event()

    async def on_frame(frame, ts):
        _busy(frame_seconds)
        if client.frames == FRAMES:
            done.set()

    async def nothing(*_):
        return None

    client = WsClient("test", lambda: f"ws://127.0.0.1:{port}/", on_frame=on_frame, on_connect=nothing,
                      on_disconnect=nothing, turn_hint=turn_hint)
    seen: list[int] = []

    async def observer():
        while not done.is_set():
            seen.append(client.frames)
            await asyncio.sleep(0)

    task = asyncio.create_task(client.run())
    watcher = asyncio.create_task(observer())
    await asyncio.wait_for(done.wait(), 30)
    await watcher
    await client.stop()
    await asyncio.wait_for(task, 10)
    server.close()
    await server.wait_closed()
    return seen


async def test_a_frame_that_takes_longer_than_a_turn_ends_the_turn():
    # Each frame holds the loop for 1.5 ms, longer than a turn (1 ms): other
    # tasks run after every frame, not after every second one.
    seen = await _run_client(0.0015)
    steps = [b - a for a, b in zip(seen, seen[1:]) if 0 < b < FRAMES]
    assert steps and max(steps) <= 1, seen


async def test_short_frames_share_a_turn_until_the_hinted_work_falls_due():
    class Hint:
        """Work due from the start: the loop yields (and wakes it) after 200 µs turns."""

        due_us = 0
        released = 0

        def release(self) -> None:
            self.released += 1

    # 0.1 ms frames: without the hint a turn would hold ten of them.
    hint = Hint()
    seen = await _run_client(0.0001, hint)
    steps = [b - a for a, b in zip(seen, seen[1:]) if 0 < b < FRAMES]
    assert hint.released >= FRAMES // 4
    assert steps and max(steps) <= 3, seen
    plain = await _run_client(0.0001)
    plain_steps = [b - a for a, b in zip(plain, plain[1:]) if 0 < b < FRAMES]
    assert max(plain_steps) >= 5, plain
