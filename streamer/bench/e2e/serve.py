"""The exchange side of a benchmark run, as its own process.

Serving from a separate process keeps the exchange's CPU out of the
streamer's measurement (the streamer process's CPU time and peak RSS are its
own) and gives each side a core of its own on a two-core machine.

    python -m streamer.bench.e2e.serve capture FILE [FILE ...] --loops N [--rate FRAMES_PER_S] [--shards K]
    python -m streamer.bench.e2e.serve simulate --exchanges okx --symbols 100 --rate 50 [--max-speed]

Prints one JSON line when listening (URLs, native symbols, frames to
expect, per feed and in total), serves until its stdin closes, then prints
one JSON line of counters and exits.

Several capture files (one per exchange: a feed carries one exchange's
session) are served at once, each from its own :class:`LocalExchangeServer`
in this one process; ``feeds`` lists them all and ``expect_frames`` is their
sum. One process is enough: a looped replay only writes prepared frames to a
socket, several times faster than one streamer process reads them, and on a
two-core machine a second exchange process would only take turns on the core
this one already has.

``--shards K`` splits each capture by symbol into K shards (:mod:`.shards`),
each served looped from its own server, so that K streamer processes share
one exchange's work, as ``coby stream --processes`` does for an exchange with
many symbols; the benchmark then measures that deployment on the same frames
as the unsplit one. Each feed entry carries its ``shard`` ("1".."K") and the
``native_symbols`` of its group; ``expect_frames`` is still the capture's
total. With ``--rate R`` the total offered load stays R: each shard is paced
at R x (its frames / the capture's frames), so all shards finish a loop
together. K = 1 (the default) serves each capture whole, without a ``shard``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import orjson

from ...capture.reader import Capture, load_capture
from ...capture.replay import protocol_of, session_symbols
from ...commands import _ws_path
from ...errors import ConfigError
from ...exchanges.registry import get_mapper
from ...local.server import LocalExchangeServer
from ...simulator.backend import DEFAULT_SYMBOLS, run_simulated_exchanges
from ...simulator.market import SimSymbol
from .looped import LoopedCaptureBackend
from .shards import split_capture

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


@dataclass(frozen=True)
class _Source:
    """What one server serves: a capture, or one shard of it."""

    path: Path
    protocol: str
    shard: str  # "" for a whole capture
    symbols: list[str]
    backend: LoopedCaptureBackend


async def serve_capture(paths: Path | list[Path], loops: int, rate: float | None = None, shards: int = 1) -> None:
    """Serve each capture, or each of its ``shards``, looped ``loops`` times from its own server, all in this
    process."""
    paths = [paths] if isinstance(paths, Path) else list(paths)
    captures = [load_capture(path) for path in paths]
    protocols = [protocol_of(capture) for capture in captures]
    _check_one_per_exchange(list(zip(protocols, captures)))
    sources = [source for protocol, capture in zip(protocols, captures)
               for source in _capture_sources(capture, protocol, loops, rate, shards)]
    async with AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(LocalExchangeServer(s.backend)) for s in sources]
        _emit({
            "feeds": [_capture_feed(source, server) for source, server in zip(sources, servers)],
            "expect_frames": sum(s.backend.total_frames for s in sources),
            "frames_per_loop": sum(s.backend.frame_count for s in sources),
        })
        await _until_stdin_closes()
        backends = [s.backend for s in sources]
        _emit({"frames_sent": sum(b.frames_sent for b in backends),
               "loops_done": min(b.loops_done for b in backends),
               "connections": sum(b.connections for b in backends),
               "sources": [{"file": s.path.name, "exchange": s.protocol, **_shard_key(s.shard),
                            "frames_sent": s.backend.frames_sent, "loops_done": s.backend.loops_done,
                            "connections": s.backend.connections, "rest_served": s.backend.rest_served,
                            "rest_missed": s.backend.rest_missed}
                           for s in sources]})


def _capture_sources(capture: Capture, protocol: str, loops: int, rate: float | None, shards: int) -> list[_Source]:
    if shards == 1:
        backend = LoopedCaptureBackend(capture, loops=loops, protocol=protocol, rate=rate)
        return [_Source(capture.path, protocol, "", list(session_symbols(capture, protocol)), backend)]
    try:
        parts = split_capture(capture, shards, protocol)
    except ConfigError as exc:
        raise SystemExit(f"serve capture: {exc}") from None
    total = sum(part.frames for part in parts)
    return [_Source(capture.path, protocol, part.shard, list(part.symbols),
                    LoopedCaptureBackend(part.capture, loops=loops, protocol=protocol,
                                         rate=_share(rate, part.frames, total)))
            for part in parts]


def _share(rate: float | None, frames: int, total: int) -> float | None:
    """A shard's part of the offered rate: proportional to its frames, so every shard's loop lasts as long."""
    if rate is None or not frames:
        return rate  # unpaced, or nothing to pace
    return rate * frames / total


def _check_one_per_exchange(captures: list[tuple[str, Capture]]) -> None:
    """A feed carries one exchange's session: two captures of one exchange cannot be served together
    (the shards of one capture can: each feed gets its own symbols)."""
    seen: dict[str, Path] = {}
    for protocol, capture in captures:
        if protocol in seen:
            raise SystemExit(f"serve capture: {capture.path} and {seen[protocol]} are both {protocol} sessions; "
                             "give at most one capture per exchange")
        seen[protocol] = capture.path


def _shard_key(shard: str) -> dict:
    return {"shard": shard} if shard else {}  # unsharded output stays as it was


def _capture_feed(source: _Source, server: LocalExchangeServer) -> dict:
    return {
        "exchange": source.protocol,
        **_shard_key(source.shard),
        "ws_url": server.ws_base_url + _ws_path(get_mapper(source.protocol).default_endpoints.ws_url),
        "rest_url": server.rest_base_url,
        "native_symbols": source.symbols,
        # Per feed as well as in total: a streamer process given some of the feeds waits for theirs.
        "expect_frames": source.backend.total_frames,
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
    cap.add_argument("--shards", type=int, default=1, metavar="K",
                     help="split each capture by symbol over K servers, one streamer feed each (default 1)")
    sim = sub.add_parser("simulate")
    sim.add_argument("--exchanges", default="okx")
    sim.add_argument("--symbols", type=int, default=3)
    sim.add_argument("--rate", type=float, default=50.0)
    sim.add_argument("--max-speed", action="store_true", help="as fast as the client reads (backpressure)")
    args = parser.parse_args(argv)
    if args.mode == "capture":
        if args.shards < 1:
            parser.error(f"--shards must be at least 1, got {args.shards}")
        asyncio.run(serve_capture(args.files, args.loops, args.rate, args.shards))
    else:
        protocols = [p.strip() for p in args.exchanges.split(",") if p.strip()]
        asyncio.run(serve_simulated(protocols, args.symbols, args.rate, args.max_speed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
