"""The exchange side of a benchmark run, as its own process.

Serving from a separate process keeps the exchange's CPU out of the
streamer's measurement (the streamer process's CPU time and peak RSS are its
own) and gives each side a core of its own on a two-core machine.

    python -m streamer.bench.e2e.serve capture FILE [FILE ...] --loops N [--rate FRAMES_PER_S]
    python -m streamer.bench.e2e.serve simulate --exchanges okx --symbols 100 --rate 50 [--max-speed]

Prints one JSON line when listening (URLs, native symbols, frames to
expect), serves until its stdin closes, then prints one JSON line of
counters and exits.

Several capture files (one per exchange: the streamer runs one feed per
exchange) are served at once, each from its own :class:`LocalExchangeServer`
in this one process; ``feeds`` lists them all and ``expect_frames`` is their
sum. One process is enough: a looped replay only writes prepared frames to a
socket, several times faster than one streamer process reads them, and on a
two-core machine a second exchange process would only take turns on the core
this one already has.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path

import orjson

from ...capture.reader import Capture, load_capture
from ...capture.replay import protocol_of, session_symbols
from ...commands import _ws_path
from ...exchanges.registry import get_mapper
from ...local.server import LocalExchangeServer
from ...simulator.backend import DEFAULT_SYMBOLS, run_simulated_exchanges
from ...simulator.market import SimSymbol
from .looped import LoopedCaptureBackend

#: Quote asset of each simulated exchange's generated symbols.
SIM_QUOTE = {"binance": "USDT", "okx": "USDT", "kraken": "USD"}


def simulated_symbols(protocol: str, count: int) -> list[SimSymbol | str]:
    """``count`` symbols: the exchange's named ones first, then generated ``SIM<n>`` ones."""
    named: list[SimSymbol | str] = list(DEFAULT_SYMBOLS[protocol])[:count]
    quote = SIM_QUOTE[protocol]
    generated = [
        # Prices spread over 10..~1000 so books look like different instruments.
        SimSymbol(f"SIM{i}", quote, Decimal(10 + (i * 37) % 990), Decimal("0.01"), Decimal("0.0001"), 2)
        for i in range(count - len(named))
    ]
    return [*named, *generated]


def symbol_name(symbol: SimSymbol | str) -> str:
    return symbol if isinstance(symbol, str) else f"{symbol.base}-{symbol.quote}"


def _emit(obj: dict) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


async def _until_stdin_closes() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def serve_capture(paths: Path | list[Path], loops: int, rate: float | None = None) -> None:
    """Serve each capture looped ``loops`` times from its own server, all in this process."""
    paths = [paths] if isinstance(paths, Path) else list(paths)
    sources = [_capture_source(path, loops, rate) for path in paths]
    _check_one_per_exchange(sources)
    async with AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(LocalExchangeServer(backend)) for _, _, backend in sources]
        _emit({
            "feeds": [_capture_feed(protocol, capture, server) for (protocol, capture, _), server
                      in zip(sources, servers)],
            "expect_frames": sum(backend.total_frames for _, _, backend in sources),
            "frames_per_loop": sum(backend.frame_count for _, _, backend in sources),
        })
        await _until_stdin_closes()
        backends = [backend for _, _, backend in sources]
        _emit({"frames_sent": sum(b.frames_sent for b in backends),
               "loops_done": min(b.loops_done for b in backends),
               "connections": sum(b.connections for b in backends),
               "sources": [{"file": path.name, "exchange": protocol, "frames_sent": backend.frames_sent,
                            "loops_done": backend.loops_done, "connections": backend.connections,
                            "rest_served": backend.rest_served, "rest_missed": backend.rest_missed}
                           for path, (protocol, _, backend) in zip(paths, sources)]})


def _capture_source(path: Path, loops: int, rate: float | None) -> tuple[str, Capture, LoopedCaptureBackend]:
    capture = load_capture(path)
    protocol = protocol_of(capture)
    return protocol, capture, LoopedCaptureBackend(capture, loops=loops, protocol=protocol, rate=rate)


def _check_one_per_exchange(sources: list[tuple[str, Capture, LoopedCaptureBackend]]) -> None:
    """The streamer runs one feed per exchange: two captures of one exchange cannot be served together."""
    seen: dict[str, Path] = {}
    for protocol, capture, _ in sources:
        if protocol in seen:
            raise SystemExit(f"serve capture: {capture.path} and {seen[protocol]} are both {protocol} sessions; "
                             "give at most one capture per exchange")
        seen[protocol] = capture.path


def _capture_feed(protocol: str, capture: Capture, server: LocalExchangeServer) -> dict:
    return {
        "exchange": protocol,
        "ws_url": server.ws_base_url + _ws_path(get_mapper(protocol).default_endpoints.ws_url),
        "rest_url": server.rest_base_url,
        "native_symbols": list(session_symbols(capture, protocol)),
    }


async def serve_simulated(protocols: list[str], count: int, rate: float, max_speed: bool) -> None:
    symbols = {p: simulated_symbols(p, count) for p in protocols}
    async with AsyncExitStack() as stack:
        urls = await stack.enter_async_context(
            run_simulated_exchanges(protocols, symbols, rate=rate, speed=None if max_speed else 1.0)
        )
        _emit({"feeds": [
            {"exchange": p, "ws_url": urls[p].ws_url, "rest_url": urls[p].rest_url,
             "symbols": [symbol_name(s) for s in symbols[p]]}
            for p in protocols
        ]})
        await _until_stdin_closes()
        _emit({"frames_sent": {p: b.frames_sent for p, b in urls.backends.items()},
               "events_generated": {p: b.events_generated for p, b in urls.backends.items()}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamer.bench.e2e.serve")
    sub = parser.add_subparsers(dest="mode", required=True)
    cap = sub.add_parser("capture")
    cap.add_argument("files", type=Path, nargs="+", metavar="FILE", help="one capture per exchange")
    cap.add_argument("--loops", type=int, default=1)
    cap.add_argument("--rate", type=float, help="frames per second (default: as fast as the client reads)")
    sim = sub.add_parser("simulate")
    sim.add_argument("--exchanges", default="okx")
    sim.add_argument("--symbols", type=int, default=3)
    sim.add_argument("--rate", type=float, default=50.0)
    sim.add_argument("--max-speed", action="store_true", help="as fast as the client reads (backpressure)")
    args = parser.parse_args(argv)
    if args.mode == "capture":
        asyncio.run(serve_capture(args.files, args.loops, args.rate))
    else:
        protocols = [p.strip() for p in args.exchanges.split(",") if p.strip()]
        asyncio.run(serve_simulated(protocols, args.symbols, args.rate, args.max_speed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
