"""Pre-rendered simulator sessions: the simulated market recorded once, replayed at full speed.

Why: the market simulator renders its frames in Python, at a few thousand
frames per second, while the streamer reads tens of thousands. A "scale"
case that reads the simulator live therefore measures the simulator. A
recording of the same market costs the exchange side nothing but a socket
write per frame (:class:`~.looped.LoopedCaptureBackend`), so the streamer is
the one that sets the pace.

How a recording is made (:func:`record_simulated`): the simulator for one
protocol runs in this process as fast as its one client reads
(``speed=None``), and that client does, over loopback WebSocket and HTTP,
exactly what the streamer's feed does on a connection (:mod:`streamer.feed`):
it fetches the instrument list, connects to the mapper's URL, sends the
mapper's subscribe messages and fetches a REST book snapshot for every symbol
whose book syncs from REST (Binance). Everything goes into a
``coby-capture/1`` file through :class:`~streamer.capture.writer.CaptureWriter`,
REST bodies as ``http`` records, just like ``coby stream --record``.

Why it replays as a valid session: a looped replay gives every connection
the whole session from its start, so each loop is a reconnect. OKX and Kraken
resync from the in-band snapshots that open the session; Binance from the
recorded ``/api/v3/depth`` body, which the recorder fetched while the diff
stream ran, so it bridges with the recorded diffs exactly as on Binance. The
recorder keeps reading until every snapshot is in, and then until every
Binance symbol has had its bridging diff, so no book is left synced on a
snapshot that no recorded diff follows.

The simulator's ``rate`` (:data:`DEFAULT_RATE`, market actions per second per
symbol) is chosen for realistic frames: OKX and Binance batch a symbol's book
changes per 100 ms, Kraken sends one frame per change batch. At 20 actions
per second about 60 % of OKX and Binance frames (85 % on Kraken) are book
updates of 1.5 to 2.5 levels each, the rest trades: the recorded Binance and
Kraken sessions in the fixtures carry 2.4 and 1.0 levels per update. A
higher rate makes fatter updates and a larger share of trades. Recording
runs at 10k-20k frames/s once the market is built (building it takes about
30 s for 1,000 symbols), so :func:`prerender_many` records several sources
in parallel processes.

    python -m streamer.bench.e2e.prerender okx 10 okx-10.jsonl.gz --frames 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ...capture.writer import CaptureWriter
from ...connection.ws import DEFAULT_TRANSPORT_MAX_BYTES
from ...errors import CobyError
from ...exchanges.base import ExchangeMapper, RestRequest
from ...exchanges.registry import get_mapper
from ...simulator.backend import PROTOCOLS, run_simulated_exchanges
from ...simulator.market import SimSymbol
from .serve import simulated_symbols, symbol_name

#: Market actions per second per symbol of the recorded market (see the module docstring).
DEFAULT_RATE = 20.0
#: The recorder's one WebSocket connection.
CONN = 0
#: Longest the recording itself may take (a stuck simulator must not hang a suite).
DEFAULT_TIMEOUT_S = 300.0


class PrerenderError(CobyError):
    """A simulated session could not be recorded (the message says which and why)."""

    code = "BEN-001"


@dataclass(frozen=True)
class Prerendered:
    """One recorded source: ``frames`` WebSocket frames of ``protocol`` with ``symbols`` symbols."""

    protocol: str
    symbols: int
    path: Path
    frames: int


def record_simulated(protocol: str, symbols: Sequence[SimSymbol | str], frames: int, target_path: Path | str,
                     *, seed: int = 0, rate: float = DEFAULT_RATE, timeout: float = DEFAULT_TIMEOUT_S) -> int:
    """Record at least ``frames`` WebSocket frames of the simulated ``protocol`` market to ``target_path``.

    Returns the number of frames recorded: more than ``frames`` when a REST
    snapshot, or the Binance diff that bridges it, came after the
    ``frames``-th frame. Runs its own event loop (from async code, use
    :func:`record_simulated_async`).
    """
    return asyncio.run(record_simulated_async(protocol, symbols, frames, target_path, seed=seed, rate=rate,
                                              timeout=timeout))


async def record_simulated_async(protocol: str, symbols: Sequence[SimSymbol | str], frames: int,
                                 target_path: Path | str, *, seed: int = 0, rate: float = DEFAULT_RATE,
                                 timeout: float = DEFAULT_TIMEOUT_S) -> int:
    """:func:`record_simulated` inside a running event loop."""
    if protocol not in PROTOCOLS:
        raise PrerenderError(f"no simulator for {protocol!r}; simulated: {', '.join(PROTOCOLS)}")
    if frames < 1:
        raise PrerenderError(f"frames must be at least 1, got {frames}")
    if not symbols:
        raise PrerenderError("a recording needs at least one symbol")
    meta = {"source": "coby market simulator", "protocol": protocol, "symbols": len(symbols), "seed": seed,
            "rate_per_symbol": rate, "frames_requested": frames}
    session = f"sim-{protocol}-{len(symbols)}sym-seed{seed}"
    async with run_simulated_exchanges([protocol], {protocol: list(symbols)}, seed=seed, rate=rate,
                                       speed=None) as urls:
        endpoints = urls[protocol]
        writer = CaptureWriter(target_path, exchange=protocol, session=session, meta=meta)
        try:
            async with aiohttp.ClientSession() as http:
                recorder = _Recorder(protocol, writer, http, endpoints.rest_url)
                names = [symbol_name(s) for s in symbols]
                try:
                    await asyncio.wait_for(recorder.run(endpoints.ws_url, names, frames), timeout)
                except TimeoutError:
                    raise PrerenderError(
                        f"recording {protocol} ({len(symbols)} symbols) took longer than {timeout:g}s; "
                        f"{recorder.frames} of {frames} frames recorded") from None
                except ConnectionClosed as exc:
                    raise PrerenderError(f"the simulated {protocol} exchange closed the recording connection "
                                         f"after {recorder.frames} frames: {exc}") from None
        except BaseException:
            # A partial recording would replay as a shorter, valid-looking session: remove it.
            writer.close()
            writer.path.unlink(missing_ok=True)
            raise
        writer.close()
    return recorder.frames


class _Recorder:
    """One client of the simulator that does on its connection what a streamer feed does, and records it."""

    def __init__(self, protocol: str, writer: CaptureWriter, http: aiohttp.ClientSession, rest_url: str) -> None:
        self.protocol = protocol
        self.writer = writer
        self.http = http
        self.rest_url = rest_url.rstrip("/")
        # Default options, as the streamer's defaults: Kraken's book depth 100 is COBY_KRAKEN_BOOK_DEPTH's
        # default, and a streamer set deeper still syncs (its mapper takes the depth from the frames).
        self.mapper: ExchangeMapper = get_mapper(protocol)
        self.frames = 0
        #: Binance: each REST snapshot's ``lastUpdateId``, until a recorded diff reaches past it.
        self.unbridged: dict[str, int] = {}

    async def run(self, ws_base: str, names: list[str], frames: int) -> None:
        # The feed's order: instruments, native names (by the mapper's rules), connect, subscribe, snapshots.
        await self._instruments()
        natives = list(dict.fromkeys(self.mapper.native_symbol(name) for name in names))
        url = self.mapper.ws_url(ws_base, natives)
        async with connect(url, max_size=DEFAULT_TRANSPORT_MAX_BYTES, ping_interval=None, compression=None) as ws:
            self.writer.connect(CONN, url)
            for message in self.mapper.subscribe_messages(natives):
                self.writer.send(CONN, url, message)
                await ws.send(message)
            snapshots = [asyncio.create_task(self._snapshot(native), name=f"prerender-snapshot-{native}")
                         for native in natives if self.mapper.snapshot_request(native) is not None]
            try:
                await self._receive(ws, frames, snapshots)
            finally:
                for task in snapshots:
                    task.cancel()
                await asyncio.gather(*snapshots, return_exceptions=True)
                # No close handshake: the simulator still has frames in flight for us,
                # and a graceful close would wait for them (the library's close timeout).
                ws.transport.abort()

    async def _receive(self, ws: ClientConnection, frames: int, snapshots: list[asyncio.Task]) -> None:
        """Record frames until ``frames`` are in, every snapshot is in, and every snapshot is bridged."""
        while self.frames < frames or not all(task.done() for task in snapshots) or self.unbridged:
            for task in snapshots:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # a failed snapshot fails the recording
            frame = await ws.recv()
            self.writer.recv(CONN, frame)
            self.frames += 1
            if self.unbridged:
                self._note_bridge(frame)

    async def _get(self, request: RestRequest) -> str:
        """GET ``request`` from the simulator and record the body (an error is a failed recording)."""
        query = urlencode(request.params)
        url = f"{self.rest_url}{request.path}" + (f"?{query}" if query else "")
        async with self.http.get(url) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise PrerenderError(f"simulated {self.protocol}: GET {request.path} answered HTTP {resp.status}: "
                                     f"{body[:200]}")
        self.writer.http(url, body)
        return body

    async def _instruments(self) -> None:
        request = self.mapper.instruments_request()
        if request is not None:
            # Recorded so that a replay answers the streamer's own instruments request.
            self.mapper.load_instruments(self.mapper.map_instruments(await self._get(request)))

    async def _snapshot(self, native: str) -> None:
        request = self.mapper.snapshot_request(native)
        assert request is not None
        body = orjson.loads(await self._get(request))
        if self.protocol == "binance":
            self.unbridged[native] = int(body["lastUpdateId"])

    def _note_bridge(self, frame: str | bytes) -> None:
        """Binance: a snapshot is bridged once a recorded diff of its symbol reaches past ``lastUpdateId``."""
        msg = orjson.loads(frame)
        data = msg.get("data", msg) if isinstance(msg, dict) else None
        if not isinstance(data, dict) or data.get("e") != "depthUpdate":
            return
        last = self.unbridged.get(data.get("s"))
        if last is not None and data.get("u", 0) > last:
            del self.unbridged[data["s"]]


def source_path(directory: Path, protocol: str, symbols: int) -> Path:
    """Where :func:`prerender_many` writes the recording of ``protocol`` with ``symbols`` symbols."""
    return Path(directory) / f"sim-{protocol}-{symbols}sym.jsonl.gz"


def prerender_many(sources: Sequence[tuple[str, int]], directory: Path, frames: int, *, seed: int = 0,
                   rate: float = DEFAULT_RATE, workers: int | None = None) -> dict[tuple[str, int], Prerendered]:
    """Record each ``(protocol, symbol count)`` once into ``directory``, using :func:`simulated_symbols`.

    Recording is single-threaded Python, so several sources are recorded at
    once, each by its own ``python -m streamer.bench.e2e.prerender`` process
    (``workers`` of them, default one per core), the largest first so the
    longest recording does not start last. A single source is recorded here.
    """
    wanted = sorted(dict.fromkeys(sources), key=lambda source: -source[1])
    workers = max(1, min(workers or os.cpu_count() or 1, len(wanted)))
    jobs = [(protocol, count, source_path(directory, protocol, count)) for protocol, count in wanted]
    if workers == 1:
        done = [Prerendered(protocol, count, path, record_simulated(
                    protocol, simulated_symbols(protocol, count), frames, path, seed=seed, rate=rate))
                for protocol, count, path in jobs]
    else:
        with ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(lambda job: _record_in_process(*job, frames=frames, seed=seed, rate=rate), jobs))
    return {(item.protocol, item.symbols): item for item in done}


def _record_in_process(protocol: str, count: int, path: Path, *, frames: int, seed: int,
                       rate: float) -> Prerendered:
    """Record one source in a child process (a process of its own gets a core of its own)."""
    command = [sys.executable, "-m", "streamer.bench.e2e.prerender", protocol, str(count), str(path),
               "--frames", str(frames), "--seed", str(seed), "--rate", repr(rate)]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode != 0:
        raise PrerenderError(f"recording {protocol} with {count} symbols failed (exit {child.returncode}): "
                             f"{child.stderr.strip()[-2000:]}")
    return Prerendered(protocol, count, path, int(orjson.loads(child.stdout.strip().splitlines()[-1])["frames"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamer.bench.e2e.prerender",
                                     description="Record a simulated exchange session to a coby-capture file.")
    parser.add_argument("protocol", choices=PROTOCOLS)
    parser.add_argument("symbols", type=int, help="number of symbols (the named ones first, then SIM<n>)")
    parser.add_argument("target", type=Path, help="capture file to write (must not exist)")
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="market actions per second per symbol")
    args = parser.parse_args(argv)
    written = record_simulated(args.protocol, simulated_symbols(args.protocol, args.symbols), args.frames,
                               args.target, seed=args.seed, rate=args.rate)
    print(orjson.dumps({"target": str(args.target), "frames": written}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
