"""Simulated exchanges served over loopback (an ``ExchangeBackend`` of
:class:`~streamer.local.server.LocalExchangeServer`).

One :class:`SimulatorBackend` owns one market, shared by every client of that
exchange. A clock task advances the market (in real time, ``speed`` times
faster, or as fast as the clients read with ``speed=None``) and, right after
each step and before anything else can run, lets every connection's renderer
turn the step into frames. Because rendering never waits, a renderer always
reads the book in exactly the state its events left it, and REST snapshots
(Binance ``/api/v3/depth``) are consistent with the update ids already given
to the WebSocket clients.

Each connection has its own renderer (its own subscriptions, channel ids,
depths, sequence chain) and an outbound buffer that a sender task drains into
the socket. The buffer is bounded. As fast as possible (``speed=None``), the
clock waits for a client whose buffer is full (backpressure: the slowest
reader sets the pace). In real time the market never waits: a client whose
buffer stays above its high-water mark for ``slow_client_timeout`` seconds,
or grows past four high-water marks, is disconnected, as real exchanges do
with slow consumers. Either way one stuck client cannot grow memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from contextlib import AsyncExitStack, asynccontextmanager
from typing import AsyncIterator, Mapping, Sequence

from ..errors import ConfigError, InvalidSymbolError, UnknownExchangeError
from ..exchanges.base import Endpoints
from ..local.server import LocalExchangeServer, WsSession
from . import binance, kraken, okx
from .market import MarketParams, MarketSimulator, SimSymbol
from .protocols import ProtocolRenderer

log = logging.getLogger(__name__)

CLOSE_INTERNAL_ERROR = 1011
#: In real-time mode a client is dropped at once when its buffer exceeds this many high-water marks.
HARD_CAP_FACTOR = 4

_RENDERERS: dict[str, type[ProtocolRenderer]] = {
    "binance": binance.BinanceRenderer,
    "kraken": kraken.KrakenRenderer,
    "okx": okx.OkxRenderer,
}
_REST = {"binance": binance.handle_rest, "kraken": kraken.handle_rest, "okx": okx.handle_rest}
_SYMBOL_CHECKS = {"binance": binance.check_symbols, "kraken": kraken.check_symbols}
#: Path of each protocol's WebSocket endpoint under the server's base URL
#: (the same path as on the real exchange's default URL).
WS_PATHS = {"binance": "", "kraken": "", "okx": "/ws/v5/public"}
PROTOCOLS = tuple(_RENDERERS)


def _s(base: str, quote: str, price: str, tick: str, lot: str, decimals: int) -> SimSymbol:
    return SimSymbol(base, quote, price, tick, lot, decimals)


#: The symbols each simulated exchange knows by name (anything else: pass a SimSymbol).
DEFAULT_SYMBOLS: dict[str, dict[str, SimSymbol]] = {
    "binance": {
        "BTC-USDT": _s("BTC", "USDT", "60000", "0.01", "0.00001", 2),
        "ETH-USDT": _s("ETH", "USDT", "3000", "0.01", "0.0001", 2),
        "SOL-USDT": _s("SOL", "USDT", "150", "0.01", "0.001", 2),
    },
    "okx": {
        "BTC-USDT": _s("BTC", "USDT", "60000", "0.01", "0.00000001", 2),
        "ETH-USDT": _s("ETH", "USDT", "3000", "0.01", "0.000001", 2),
        "SOL-USDT": _s("SOL", "USDT", "150", "0.01", "0.000001", 2),
    },
    "kraken": {
        "BTC-USD": _s("BTC", "USD", "60000", "0.1", "0.00000001", 1),
        "ETH-USD": _s("ETH", "USD", "3000", "0.01", "0.00000001", 2),
        "SOL-USD": _s("SOL", "USD", "150", "0.01", "0.00000001", 2),
    },
}
#: The demo's symbols per exchange (normalized names).
DEMO_SYMBOLS: dict[str, list[str]] = {protocol: list(specs) for protocol, specs in DEFAULT_SYMBOLS.items()}

_ASSET_ALIASES = {"XBT": "BTC", "XDG": "DOGE"}


def _check_protocol(protocol: str) -> str:
    key = protocol.strip().lower() if isinstance(protocol, str) else protocol
    if key not in _RENDERERS:
        raise UnknownExchangeError(f"no simulator for {protocol!r}; simulated: {', '.join(PROTOCOLS)}")
    return key


def resolve_symbols(protocol: str, symbols: Sequence[SimSymbol | str] | None) -> list[SimSymbol]:
    """Symbols for one simulated exchange: ``SimSymbol`` as given, names
    (``BTC-USDT``, ``XBT/USD``) from :data:`DEFAULT_SYMBOLS`; None means the demo set."""
    protocol = _check_protocol(protocol)
    catalog = DEFAULT_SYMBOLS[protocol]
    if symbols is None:
        return list(catalog.values())
    out: list[SimSymbol] = []
    for item in symbols:
        if isinstance(item, SimSymbol):
            out.append(item)
            continue
        if not isinstance(item, str):
            raise InvalidSymbolError(f"a simulator symbol must be a SimSymbol or a name, got {item!r}")
        parts = item.strip().upper().replace("/", "-").split("-")
        name = "-".join(_ASSET_ALIASES.get(p, p) for p in parts)
        spec = catalog.get(name)
        if spec is None:
            raise InvalidSymbolError(
                f"the {protocol} simulator has no default for {item!r} (known: {', '.join(catalog)}); "
                "pass a SimSymbol to simulate it"
            )
        out.append(spec)
    return out


class _Client:
    """One connection: its renderer and a bounded outbound buffer drained by a sender task."""

    __slots__ = ("session", "renderer", "queue", "queued_bytes", "high_water", "ready", "space",
                 "closing", "dropped", "frames_sent", "over_since")

    def __init__(self, session: WsSession, renderer: ProtocolRenderer, high_water: int) -> None:
        self.session = session
        self.renderer = renderer
        self.queue: deque[str] = deque()
        self.queued_bytes = 0
        self.high_water = high_water
        self.ready = asyncio.Event()
        self.space = asyncio.Event()
        self.space.set()
        self.closing = False
        self.dropped = False
        self.frames_sent = 0
        #: Loop time since which the buffer has been above its high-water mark.
        self.over_since: float | None = None

    def push(self, frames: list[str]) -> None:
        """Queue frames without waiting (rendering must never wait)."""
        if not frames or self.dropped:
            return
        queue = self.queue
        size = self.queued_bytes
        for frame in frames:
            queue.append(frame)
            size += len(frame)
        self.queued_bytes = size
        self.ready.set()
        if size > self.high_water:
            self.space.clear()

    async def wait_for_space(self, timeout: float) -> bool:
        """Wait until the buffer is below its high-water mark; False on timeout."""
        if self.space.is_set():
            return True
        try:
            await asyncio.wait_for(self.space.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def send_loop(self, on_sent) -> None:
        """Drain the buffer into the socket until closing and empty (or the client goes)."""
        queue = self.queue
        low_water = self.high_water // 2
        while True:
            if not queue:
                if self.closing:
                    return
                self.ready.clear()
                await self.ready.wait()
                continue
            frame = queue.popleft()
            self.queued_bytes -= len(frame)
            if self.queued_bytes <= low_water:
                self.space.set()
            await self.session.send(frame)
            self.frames_sent += 1
            on_sent()


class SimulatorBackend:
    """A simulated exchange speaking ``protocol`` (``binance``, ``kraken`` or ``okx``).

    ``rate`` is market actions per second per symbol; ``duration`` (simulated
    seconds) stops the market after that long (``finished`` is set; clients
    stay connected and keep getting heartbeats). ``speed`` scales simulated
    time against the wall clock; ``None`` runs as fast as the clients read
    (frames then carry simulated timestamps that run ahead of the wall clock).
    ``okx_zero_checksum`` makes OKX send ``checksum: 0`` (OKX's behaviour since
    2026) so clients must rely on the seqId chain.
    """

    def __init__(
        self,
        protocol: str,
        symbols: Sequence[SimSymbol | str] | None = None,
        *,
        seed: int = 0,
        rate: float = 50.0,
        duration: float | None = None,
        okx_zero_checksum: bool = False,
        speed: float | None = 1.0,
        start_us: int | None = None,
        params: MarketParams | None = None,
        tick_s: float = 0.01,
        slow_client_timeout: float = 10.0,
        max_buffered_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.protocol = _check_protocol(protocol)
        for name, value in (("rate", rate), ("tick_s", tick_s), ("slow_client_timeout", slow_client_timeout)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"SimulatorBackend {name} must be a positive number, got {value!r}")
        if speed is not None and not (math.isfinite(speed) and speed > 0):
            raise ConfigError(f"speed must be a positive number or None (as fast as possible), got {speed!r}")
        if duration is not None and not (math.isfinite(duration) and duration > 0):
            raise ConfigError(f"duration must be a positive number of seconds, got {duration!r}")
        if max_buffered_bytes < 64 * 1024:
            raise ConfigError("max_buffered_bytes must be at least 64 KiB")
        self.market = MarketSimulator(
            resolve_symbols(self.protocol, symbols), seed, start_us=start_us, params=params,
            venue=self.protocol, rate=rate,
        )
        check = _SYMBOL_CHECKS.get(self.protocol)
        if check is not None:
            check(self.market)  # fail here, not on the first connection
        self.duration = duration
        self.speed = speed
        self.okx_zero_checksum = okx_zero_checksum
        self.tick_s = tick_s
        self.slow_client_timeout = slow_client_timeout
        self.max_buffered_bytes = max_buffered_bytes
        #: Set when ``duration`` has been simulated.
        self.finished = asyncio.Event()
        self.now_us = self.market.now_us
        self.frames_sent = 0
        self.events_generated = 0
        self.connections = 0
        self.slow_clients_dropped = 0
        self._clients: list[_Client] = []
        self._has_clients = asyncio.Event()
        self._clock: asyncio.Task | None = None
        self._closed = False

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        """Start the market clock (idempotent; the server's first request also starts it)."""
        if self._closed:
            raise ConfigError("this SimulatorBackend has been closed")
        if self._clock is None:
            self._clock = asyncio.create_task(self._run_clock(), name=f"simulator-clock-{self.protocol}")
            self._clock.add_done_callback(self._clock_done)

    def _clock_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s simulator clock stopped", self.protocol, exc_info=task.exception())

    async def aclose(self) -> None:
        """Stop the clock. Clients are closed by the server."""
        self._closed = True
        clock, self._clock = self._clock, None
        if clock is not None:
            clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await clock

    async def __aenter__(self) -> "SimulatorBackend":
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    @property
    def clients(self) -> int:
        return len(self._clients)

    # -- the clock ----------------------------------------------------------------
    async def _run_clock(self) -> None:
        loop = asyncio.get_running_loop()
        market = self.market
        end_us = None if self.duration is None else market.start_us + int(self.duration * 1e6)
        speed = self.speed
        anchor_real, anchor_sim = loop.time(), market.now_us
        quantum_us = int(self.tick_s * 1e6)
        finished = False
        while True:
            if speed is None and not finished:
                if not self._clients:
                    # Nobody reads: as-fast-as-possible would only spin. Wait for a client.
                    self._has_clients.clear()
                    await self._has_clients.wait()
                await asyncio.sleep(0)
                now = self.now_us + quantum_us
            else:
                await asyncio.sleep(self.tick_s)
                now = anchor_sim + int((loop.time() - anchor_real) * (speed or 1.0) * 1e6)
            if finished:
                events = []
            elif end_us is not None and now >= end_us:
                now = end_us
                events = market.step(end_us)
                finished = True
                speed = speed or 1.0  # after the end, time passes at wall-clock pace
                anchor_real, anchor_sim = loop.time(), end_us
                self.finished.set()
                log.info("%s simulator finished after %.1f simulated seconds", self.protocol, self.duration)
            else:
                events = market.step(now)
            self.now_us = now
            self.events_generated += len(events)
            clients = list(self._clients)
            # Render every connection before anything can await: each renderer sees
            # the book exactly as these events left it.
            for client in clients:
                try:
                    client.push(client.renderer.on_market(events, now))
                except Exception:  # a renderer bug costs that one connection, not the market
                    log.exception("%s simulator: rendering for %s failed", self.protocol, client.session.path)
                    client.renderer.close(CLOSE_INTERNAL_ERROR, "internal error")
                    await self._drop_slow(client, count=False)
            for client in clients:
                if client.space.is_set():
                    client.over_since = None
                elif speed is None:
                    # As fast as possible: the slowest reader sets the pace.
                    if not await client.wait_for_space(self.slow_client_timeout):
                        await self._drop_slow(client)
                else:
                    # Real time: the market does not wait for anyone. A client gets
                    # slow_client_timeout to catch up, within a hard memory cap.
                    if client.over_since is None:
                        client.over_since = loop.time()
                    if (client.queued_bytes > HARD_CAP_FACTOR * client.high_water
                            or loop.time() - client.over_since > self.slow_client_timeout):
                        await self._drop_slow(client)

    async def _drop_slow(self, client: _Client, *, count: bool = True) -> None:
        """Disconnect a client at once (no close handshake) and forget its buffer."""
        if client.dropped:
            return
        client.dropped = True
        if count:
            self.slow_clients_dropped += 1
            log.warning("%s simulator: client on %s does not keep up (%d bytes waiting); disconnecting it",
                        self.protocol, client.session.path, client.queued_bytes)
        client.queue.clear()
        client.queued_bytes = 0
        client.space.set()
        if client in self._clients:
            self._clients.remove(client)
        await client.session.abort()

    def _count_frame(self) -> None:
        self.frames_sent += 1

    # -- ExchangeBackend ------------------------------------------------------------
    async def handle_rest(self, path: str, query: Mapping[str, str]) -> tuple[int, str, str]:
        await self.start()
        return _REST[self.protocol](self.market, path, query, self.now_us)

    def _renderer(self, session: WsSession) -> ProtocolRenderer:
        cls = _RENDERERS[self.protocol]
        self.connections += 1
        kwargs = {"zero_checksum": self.okx_zero_checksum} if self.protocol == "okx" else {}
        return cls(self.market, path=session.path, query=session.query, connection_id=self.connections, **kwargs)

    async def handle_ws(self, session: WsSession) -> None:
        await self.start()
        renderer = self._renderer(session)
        session.auto_replies.update(renderer.auto_replies)
        client = _Client(session, renderer, self.max_buffered_bytes)
        # From here to the first await nothing else runs: the connection starts
        # from the market's current state and gets every later step.
        self._clients.append(client)
        self._has_clients.set()
        client.push(renderer.on_connect(self.now_us))
        sender = asyncio.create_task(client.send_loop(self._count_frame), name=f"simulator-send{session.path}")
        receive: asyncio.Future | None = None
        try:
            while renderer.close_code is None and not client.dropped:
                receive = asyncio.ensure_future(session.receive())
                await asyncio.wait({receive, sender}, return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    receive.cancel()  # the sender ended: the client is gone
                    break
                text = receive.result()
                if text is None:
                    break
                client.push(renderer.on_message(text, self.now_us))
                if not await client.wait_for_space(self.slow_client_timeout):
                    await self._drop_slow(client)
            if renderer.close_code is not None and not client.dropped:
                # Send what the renderer still had to say (an error), then close.
                client.closing = True
                client.ready.set()
                with contextlib.suppress(Exception):  # timed out, or the client left meanwhile
                    await asyncio.wait_for(asyncio.shield(sender), self.slow_client_timeout)
                log.info("%s simulator closing %s: %s", self.protocol, session.path, renderer.close_reason)
                await session.close(renderer.close_code)
        finally:
            if client in self._clients:
                self._clients.remove(client)
            client.dropped = True
            if receive is not None and not receive.done():
                receive.cancel()
            if not sender.done():
                sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender


class SimulatedExchanges(dict):
    """``{protocol: Endpoints}`` of running simulated exchanges, plus their
    ``backends`` and ``servers`` (for statistics and fault injection)."""

    def __init__(self) -> None:
        super().__init__()
        self.backends: dict[str, SimulatorBackend] = {}
        self.servers: dict[str, LocalExchangeServer] = {}


@asynccontextmanager
async def run_simulated_exchanges(
    protocols: Sequence[str],
    symbols: Mapping[str, Sequence[SimSymbol | str]] | Sequence[SimSymbol | str] | None = None,
    *,
    seed: int = 0,
    rate: float = 50.0,
    duration: float | None = None,
    speed: float | None = 1.0,
    okx_zero_checksum: bool = False,
    params: MarketParams | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[SimulatedExchanges]:
    """Start one :class:`LocalExchangeServer` per protocol, each serving a
    simulated market, and yield their endpoints::

        async with run_simulated_exchanges(["binance", "okx"], DEMO_SYMBOLS) as urls:
            urls["okx"].ws_url    # ws://127.0.0.1:PORT/ws/v5/public

    ``symbols`` is per protocol (a mapping) or one list for all; None means
    :data:`DEMO_SYMBOLS`. All markets share one start time and seed, so the
    same asset trades at about the same price on every simulated exchange.
    Everything stops when the block exits.
    """
    wanted = [_check_protocol(p) for p in protocols]
    if not wanted:
        raise ConfigError("run_simulated_exchanges needs at least one protocol")
    if len(set(wanted)) != len(wanted):
        raise ConfigError(f"duplicate protocols: {wanted}")
    start_us = int(time.time() * 1e6)
    result = SimulatedExchanges()
    async with AsyncExitStack() as stack:
        for protocol in wanted:
            chosen = symbols.get(protocol) if isinstance(symbols, Mapping) else symbols
            backend = SimulatorBackend(
                protocol, chosen, seed=seed, rate=rate, duration=duration, speed=speed,
                okx_zero_checksum=okx_zero_checksum, start_us=start_us, params=params,
            )
            stack.push_async_callback(backend.aclose)
            server = await stack.enter_async_context(LocalExchangeServer(backend, host=host))
            await backend.start()
            result[protocol] = Endpoints(server.ws_base_url + WS_PATHS[protocol], server.rest_base_url)
            result.backends[protocol] = backend
            result.servers[protocol] = server
            log.info("simulated %s on %s (%d symbols)", protocol, server.rest_base_url, len(backend.market.symbols))
        yield result
