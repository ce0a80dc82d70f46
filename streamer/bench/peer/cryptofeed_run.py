"""Run cryptofeed's own feed handler over a recorded session, without any network.

This is how cryptofeed replays its own recordings (``raw_data_collection.playback``):
the REST calls it makes (instrument metadata at construction, Binance's depth
snapshot) are answered from the capture's recorded bodies, and every recorded
WebSocket frame goes to the feed's ``message_handler`` with a receipt time, as
its connection handler would pass it.

Where the frames come from:

* in process (the default): the recorded frames go straight to the feed's
  ``message_handler``. cryptofeed's socket read (``websockets`` recv) is left
  out: the peer's handler alone, to compare with COBY's processor alone;
* ``--ws-url ws://127.0.0.1:PORT/...``: over a loopback WebSocket from the same
  exchange process COBY reads (:mod:`streamer.bench.e2e.serve`), through
  cryptofeed's own transport, ``WSAsyncConn`` and ``ConnectionHandler``, as
  its ``FeedHandler`` runs a feed. Only the scheme and host of the feed's
  address are replaced by the URL's (its path and query, which select Binance's streams,
  stay); ``--expect-frames`` says when the run is over. Timed like COBY's
  end-to-end figure: from the first frame received until every frame was
  handled and the backends written out.

Two modes:

* ``noop``: book and trade callbacks that do nothing (checksum validation on
  for Kraken and OKX, where cryptofeed supports it);
* ``backends``: cryptofeed's PostgreSQL backend (``BookPostgres``,
  ``TradePostgres``, asyncpg) and Redis backend (``BookStream``,
  ``TradeStream``) on the given servers; the run ends when their queues are
  written out.

Run as ``python -m streamer.bench.peer.cryptofeed_run --capture FILE --loops N
--mode noop|backends [--ws-url URL --expect-frames N] [--pg-host ...]
[--redis-key-prefix ...]``; prints one
JSON object: frames, seconds (frame loop plus backend drain), CPU seconds,
peak RSS, callback counts and checksum failures.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import time
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson

from ...capture.reader import load_capture
from .frames import http_bodies, recv_frames, resource_key

log = logging.getLogger(__name__)

#: cryptofeed's exchange class for each COBY protocol.
FEED_CLASSES = {"binance": "Binance", "kraken": "Kraken", "okx": "OKX"}
#: Where cryptofeed validates checksums (Binance has sequence ids instead).
CHECKSUM_PROTOCOLS = frozenset({"kraken", "okx"})
#: Frames handled between yields to the event loop (the same batch COBY's replay server writes).
YIELD_EVERY = 256
#: cryptofeed writes its table name into its SQL text: only plain identifiers go there.
PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class _Counts:
    """No-op callbacks that only count, so a run can show cryptofeed did the work."""

    def __init__(self) -> None:
        self.books = 0
        self.trades = 0

    async def book(self, book, receipt_timestamp) -> None:
        self.books += 1

    async def trade(self, trade, receipt_timestamp) -> None:
        self.trades += 1


class _ReplayConnection:
    """What a feed's ``subscribe`` writes to: it goes nowhere (the frames are already recorded)."""

    def __init__(self, conn) -> None:
        self.uuid = conn.uuid
        self.id = conn.id
        self.subscription = conn.subscription
        self.conn_type = "wss"

    async def write(self, msg: str) -> None:
        return None


def _install_recorded_rest(bodies: dict[tuple, str]) -> None:
    """Answer cryptofeed's REST reads from the recorded bodies; an unrecorded URL fails loudly."""
    from cryptofeed.connection import HTTPAsyncConn, HTTPSync

    def body_for(address: str, params: dict | None) -> str:
        path, ident = resource_key(address)
        if params:  # parameters passed apart from the URL select the resource too
            ident = resource_key(f"{address}?{urlencode(params)}")[1]
        if (path, ident) in bodies:
            return bodies[(path, ident)]
        candidates = [key for key in bodies if key[0] == path]
        if len(candidates) == 1:  # one recording of this path: the parameters only shaped it
            return bodies[candidates[0]]
        raise LookupError(f"no recorded REST body for {address} (recorded: {sorted(bodies)})")

    def sync_read(self, address, params=None, headers=None, json=False, text=True, uuid=None):
        body = body_for(address, params)
        return orjson.loads(body) if json else body

    async def async_read(self, address, header=None, params=None, return_headers=False, retry_count=0, retry_delay=60):
        body = body_for(address, params)
        return (body, {}) if return_headers else body

    HTTPSync.read = sync_read
    HTTPAsyncConn.read = async_read


def _callbacks(mode: str, counts: _Counts, args) -> dict:
    from cryptofeed.defines import L2_BOOK, TRADES

    if mode == "noop":
        return {L2_BOOK: counts.book, TRADES: counts.trade}
    from cryptofeed.backends.postgres import BookPostgres, TradePostgres
    from cryptofeed.backends.redis import BookStream, TradeStream

    pg = dict(host=args.pg_host, port=args.pg_port, user=args.pg_user, db=args.pg_db)
    if not PLAIN_IDENTIFIER.fullmatch(args.pg_schema):
        raise ValueError(f"--pg-schema must be a plain lower-case identifier, got {args.pg_schema!r}")
    redis = dict(socket=args.redis_socket) if args.redis_socket else dict(host=args.redis_host, port=args.redis_port)
    return {
        L2_BOOK: [BookPostgres(table=f"{args.pg_schema}.book", **pg), BookStream(key=f"{args.redis_key_prefix}book", **redis), counts.book],
        TRADES: [TradePostgres(table=f"{args.pg_schema}.trades", **pg), TradeStream(key=f"{args.redis_key_prefix}trades", **redis), counts.trade],
    }


async def run(args) -> dict:
    """Build the feed, push every looped frame through it, drain the backends; the figures of one run."""
    import cryptofeed.exchanges as exchanges
    from cryptofeed.defines import L2_BOOK, TRADES

    capture = load_capture(Path(args.capture))
    _install_recorded_rest(http_bodies(capture))
    subscription = capture.meta.get("cryptofeed_subscription") or {}
    symbols = sorted(set(subscription.get("l2_book", [])) | set(subscription.get("trades", [])))
    if not symbols:
        raise ValueError(f"{args.capture}: meta has no cryptofeed_subscription with l2_book or trades")
    counts = _Counts()
    feed_cls = getattr(exchanges, FEED_CLASSES[args.protocol])
    checksums = args.protocol in CHECKSUM_PROTOCOLS
    feed = feed_cls(
        subscription={L2_BOOK: subscription.get("l2_book", []), TRADES: subscription.get("trades", [])},
        callbacks=_callbacks(args.mode, counts, args),
        checksum_validation=checksums,
    )
    loop = asyncio.get_running_loop()
    backends = [cb for cbs in feed.callbacks.values() for cb in cbs if hasattr(cb, "start")]
    for backend in backends:
        backend.start(loop)
    conns = feed.connect()
    if args.ws_url:
        frames_total, wall_frames, cpu0, wall0 = await _over_websocket(conns, args)
    else:
        frames_total, wall_frames, cpu0, wall0 = await _in_process(capture, conns, args.loops)
    await _drain(backends)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    await feed.shutdown()
    return {
        "exchange": args.protocol,
        "mode": args.mode,
        "checksum_validation": checksums,
        "transport": "websocket" if args.ws_url else "none",
        "frames": frames_total,
        "seconds": wall,
        "frame_loop_seconds": wall_frames,
        "cpu_seconds": cpu,
        "peak_rss_mb": _peak_rss_mb(),
        "book_callbacks": counts.books,
        "trade_callbacks": counts.trades,
        "cryptofeed_version": _version(),
    }


async def _in_process(capture, conns: list, loops: int) -> tuple[int, float, float, float]:
    """Every recorded frame, ``loops`` times, straight into the feed's message handler.

    Returns frames handled, seconds of the frame loop, and the CPU and wall
    clocks at its start.
    """
    for conn, subscribe, _handler, _auth in conns:
        await subscribe(_ReplayConnection(conn))
    conn, handler = _ReplayConnection(conns[0][0]), conns[0][2]
    frames = recv_frames(capture)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(loops):
        for index, frame in enumerate(frames):
            await handler(frame, conn, time.time())
            if index % YIELD_EVERY == 0:
                # A socket read yields to the loop now and then; without it the
                # backend writers would not run until the end.
                await asyncio.sleep(0)
    return len(frames) * loops, time.perf_counter() - wall0, cpu0, wall0


async def _over_websocket(conns: list, args) -> tuple[int, float, float, float]:
    """The served frames through cryptofeed's own connection and connection handler.

    The clocks start at the first frame received; the frame loop ends when
    ``--expect-frames`` frames were handled.
    """
    from cryptofeed.connection import WSAsyncConn
    from cryptofeed.connection_handler import ConnectionHandler

    sockets = [c for c in conns if isinstance(c[0], WSAsyncConn)]
    if len(sockets) != 1:
        # The exchange process streams the whole session to every connection: a feed
        # spread over several would receive it several times.
        raise ValueError(f"the feed opened {len(sockets)} WebSocket connections; the served session needs exactly 1")
    conn, subscribe, handler, authenticate = sockets[0]
    conn.address = _local_address(conn.address, args.ws_url)
    state = {"handled": 0, "cpu0": 0.0, "wall0": 0.0}
    all_handled = asyncio.Event()

    async def counting(message, connection, timestamp):
        if not state["handled"]:
            state["cpu0"], state["wall0"] = time.process_time(), time.perf_counter()
        await handler(message, connection, timestamp)
        state["handled"] += 1
        if state["handled"] >= args.expect_frames:
            all_handled.set()

    # retries=0: a dropped connection ends the run (the frames are served once); timeout=-1: no watchdog.
    connection_handler = ConnectionHandler(conn, subscribe, counting, authenticate, retries=0, timeout=-1)
    task = asyncio.create_task(connection_handler._create_connection())
    waiter = asyncio.create_task(all_handled.wait())
    await asyncio.wait({task, waiter}, timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED)
    wall_frames = time.perf_counter() - state["wall0"]
    connection_handler.running = False
    if not all_handled.is_set():
        waiter.cancel()
        task.cancel()
        raise RuntimeError(f"cryptofeed handled {state['handled']} of {args.expect_frames} frames "
                           f"within {args.timeout}s")
    await conn.close()
    task.cancel()
    with suppress(asyncio.CancelledError, Exception):  # the handler ends on the closed connection
        await task
    return state["handled"], wall_frames, state["cpu0"], state["wall0"]


def _local_address(address: str, ws_url: str) -> str:
    """The feed's WebSocket address on the local exchange process: its scheme and host replaced."""
    local, feed = urlsplit(ws_url), urlsplit(address)
    return urlunsplit((local.scheme, local.netloc, feed.path, feed.query, ""))


async def _drain(backends: list) -> None:
    """Wait until every queued row is written, then stop the writers.

    A writer that dies (a refused connection, a bad URL) would leave its queue
    unjoined forever; its exception is raised instead.
    """
    joins = {asyncio.ensure_future(backend.queue.join()): backend for backend in backends}
    pending = set(joins)
    while pending:
        watched = pending | {joins[j].worker for j in pending}
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in joins:
                pending.discard(task)
            else:  # a writer ended before its queue was written out
                for join in pending:
                    join.cancel()
                error = task.exception() if not task.cancelled() else None
                raise RuntimeError(f"a cryptofeed backend writer stopped early: {error!r}")
    for backend in backends:
        await backend.stop()
    await asyncio.gather(*(backend.worker for backend in backends))


def _peak_rss_mb() -> float | None:
    """This process's own peak RSS (``VmHWM``: unlike ``ru_maxrss`` it does not carry the parent's peak
    over ``fork``+``exec``); None where ``/proc`` is absent."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _version() -> str:
    from importlib.metadata import version

    return version("cryptofeed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamer.bench.peer.cryptofeed_run")
    parser.add_argument("--capture", required=True)
    parser.add_argument("--protocol", required=True, choices=sorted(FEED_CLASSES))
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--mode", choices=("noop", "backends"), default="noop")
    parser.add_argument("--ws-url", help="read the frames over a WebSocket from this exchange URL (its scheme and host)")
    parser.add_argument("--expect-frames", type=int, help="with --ws-url: frames that make up the run")
    parser.add_argument("--timeout", type=float, default=600.0, help="with --ws-url: seconds to wait for them")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--pg-db", default="coby_bench_peer")
    parser.add_argument("--pg-schema", default="public", help="schema of cryptofeed's book and trades tables")
    parser.add_argument("--redis-host", default="127.0.0.1")
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--redis-socket", help="Redis unix socket (instead of host and port)")
    parser.add_argument("--redis-key-prefix", default="coby-bench-peer:cryptofeed:")
    args = parser.parse_args(argv)
    if args.ws_url and not args.expect_frames:
        parser.error("--ws-url needs --expect-frames")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = asyncio.run(run(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
