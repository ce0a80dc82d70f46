"""``coby bench receive``: what receiving a frame costs, with nothing else done with it.

The frames of a capture (Kraken's small ones, OKX's 20-level ones) are
written as fast as the socket takes them by a server in another process
(:func:`serve`: pre-framed WebSocket bytes in large writes, so the reader,
not the server, sets the pace and each read returns many frames). In this
process a client reads a fixed number of them and hands each to an
``on_frame`` coroutine that only counts, and the figure is this process's
CPU time per frame from the first frame to the last:

* ``coby``: :class:`streamer.connection.ws.WsClient` as the feeds use it
  (picows, the bounded frame queue, the receive loop with its turns and its
  stall watch);
* ``websockets``: the ``websockets`` library's asyncio client with a
  ``recv()`` loop of the same shape, the adapter COBY used before.

    coby bench receive [--json] [--runs N] [--quick]
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from ..capture.reader import load_capture, payload
from .e2e.figures import figure, figure_line, write_results
from .e2e.suite import captures_dir

SUITE = "receive"
CAPTURES = ("kraken-spot", "okx")
FRAMES = 200_000
QUICK_FRAMES = 20_000
#: Frames per write of the server: large writes keep the server far ahead of the reader.
FRAMES_PER_WRITE = 500


# -- the server (its own process) ------------------------------------------------
async def _serve(capture: Path, frames: int) -> None:
    from websockets.asyncio.server import serve
    from websockets.frames import Frame, Opcode

    texts = [p for p in (payload(rec) for rec in load_capture(capture).recv_records()) if isinstance(p, str)]
    encoded = [Frame(Opcode.TEXT, t.encode()).serialize(mask=False, extensions=[]) for t in texts]

    async def handler(ws) -> None:
        sent = 0
        while sent < frames:
            count = min(FRAMES_PER_WRITE, frames - sent)
            ws.transport.write(b"".join(encoded[(sent + k) % len(encoded)] for k in range(count)))
            sent += count
            while ws.transport.get_write_buffer_size() > 1 << 20:
                await asyncio.sleep(0.0005)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None, max_queue=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes


def serve(capture: Path, frames: int) -> tuple[subprocess.Popen, int]:
    """A server process writing ``frames`` of ``capture`` to every connection; (process, port)."""
    process = subprocess.Popen([sys.executable, "-m", "streamer.bench.receive", "--serve", str(capture), str(frames)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, int(process.stdout.readline())


# -- the clients (this process) ----------------------------------------------------
class _Clock:
    """CPU time of this process from the first frame on."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self.count = 0
        self.cpu0 = 0.0
        self.cpu = 0.0  # set when the last frame arrives
        self.done = asyncio.Event()

    async def on_frame(self, frame, ts) -> None:
        self.count += 1
        if self.count == 1:
            self.cpu0 = time.process_time()
        elif self.count == self.frames:
            self.cpu = time.process_time() - self.cpu0
            self.done.set()

    def us_per_frame(self) -> float:
        return self.cpu / (self.frames - 1) * 1e6


async def coby_client(port: int, frames: int) -> float:
    from ..connection.ws import WsClient, WsOptions

    clock = _Clock(frames)

    async def nothing(*_):
        return None

    client = WsClient("bench", lambda: f"ws://127.0.0.1:{port}/", on_frame=clock.on_frame, on_connect=nothing,
                      on_disconnect=nothing, options=WsOptions(backoff_base=60.0))
    task = asyncio.create_task(client.run())
    await asyncio.wait_for(clock.done.wait(), 300)
    await client.stop()
    await asyncio.wait_for(task, 10)
    return clock.us_per_frame()


async def websockets_client(port: int, frames: int) -> float:
    from websockets.asyncio.client import connect

    clock = _Clock(frames)
    async with connect(f"ws://127.0.0.1:{port}/", max_queue=256, compression=None, max_size=2**26) as ws:
        recv, on_frame = ws.recv, clock.on_frame
        while not clock.done.is_set():
            frame = await recv()
            await on_frame(frame, time.time_ns())
    return clock.us_per_frame()


CLIENTS = {"coby": coby_client, "websockets": websockets_client}


def run(runs: int, frames: int, command: str, folder: Path | None = None) -> list[dict]:
    folder = folder or captures_dir()
    figures: list[dict] = []
    for name in CAPTURES:
        path = folder / f"{name}.session1.jsonl.gz"
        if not path.exists():
            print(f"bench receive: {path} not found, {name} skipped", file=sys.stderr)
            continue
        samples: dict[str, list[float]] = {client: [] for client in CLIENTS}
        for i in range(runs):
            for client, read in CLIENTS.items():  # interleaved, so drift hits both
                server, port = serve(path, frames)
                try:
                    samples[client].append(asyncio.run(read(port, frames)))
                finally:
                    server.communicate(timeout=30)
            print(f"bench receive: {name} run {i + 1}/{runs}", file=sys.stderr, flush=True)
        for client, values in samples.items():
            figures.append(figure(f"receive.{name}.{client}.us_cpu_per_frame", values, "us", command, frames=frames))
        ratios = [w / c for w, c in zip(samples["websockets"], samples["coby"])]
        figures.append(figure(f"receive.{name}.ratio.websockets_over_coby", ratios, "x", command, frames=frames))
    return figures


def main(args) -> int:
    """``coby bench receive [--json] [--runs N] [--quick] [--results DIR]``."""
    quick = bool(getattr(args, "quick", False))
    runs = getattr(args, "runs", None) or 5
    frames = QUICK_FRAMES if quick else FRAMES
    command = "coby bench receive --json" + (" --quick" if quick else "") + (f" --runs {runs}" if runs != 5 else "")
    figures = run(runs, frames, command)
    write_results(figures, getattr(args, "results", None), SUITE, quick)
    for item in figures:
        print(figure_line(item, bool(getattr(args, "json", False))))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        asyncio.run(_serve(Path(sys.argv[2]), int(sys.argv[3])))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
