"""Serve a recorded session exchange-natively, as a :class:`~streamer.local.server.ExchangeBackend`.

WebSocket: once a client subscribes, every ``recv`` frame of the capture (all
its connections merged, in recorded order) is written to that client's
socket, binary frames as binary. Any client text message counts as a
subscription, except recognised application pings, which are answered. For
Binance the combined-stream URL (``/stream?streams=...``) is itself the
subscription, so streaming starts on connect; a ``{"method": "SUBSCRIBE"}``
message also starts it and is acknowledged as Binance does. Each connection
gets the whole session from its start: a reconnecting client re-syncs from the
recorded snapshots instead of joining a stream it can no longer rebuild.
After the last frame the socket stays open (an exchange does not hang up when
the market goes quiet), so the client does not reconnect and replay again.

Pacing: ``speed=None`` writes as fast as the socket takes, ``1`` follows the
recorded ``t`` deltas, ``N`` is N times faster. Deadlines are absolute
offsets from the stream start, so sleeping late never accumulates drift.

REST: a GET is matched to a recorded ``http`` record by URL path and the
identifying parameters (``symbol``, ``instId``, ``pair``, ``instType``...);
others such as ``limit`` may differ. Repeated requests walk through repeated
recordings of the same resource and then keep answering with the last one.
Unmatched requests get a 404 JSON error and are counted.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl, urlsplit

import orjson

from ..errors import ConfigError, UnknownExchangeError
from ..local.server import JSON, ExchangeBackend, WsSession, WsSessionClosed, json_error
from .reader import CONNECT, HTTP, RECV, SEND, Capture, payload

log = logging.getLogger(__name__)

#: Query parameters that select *which* resource a GET returns; all others
#: (``limit``, ``depth``, ``with_id``...) only shape it and may differ on replay.
IDENTIFYING_PARAMS = frozenset(
    {"symbol", "symbols", "instId", "instType", "instFamily", "uly", "pair", "currency", "market", "kind"}
)

#: Protocol ids of the connectors COBY has.
PROTOCOLS = ("binance", "kraken", "okx")

#: Frames written back-to-back before yielding to the loop at max speed, so a
#: replay never starves other tasks (the client under test may share the loop).
_YIELD_EVERY = 256


# -- capture inspection -------------------------------------------------------


def protocol_of(capture: Capture | Mapping) -> str:
    """Which COBY protocol speaks a capture's exchange: ``binance``, ``kraken`` or ``okx``.

    Accepts a :class:`Capture` or its meta header. Venue variants that speak
    the same API map to it (Binance.US, Binance TR -> ``binance``; OKEx,
    Okcoin -> ``okx``). Venues whose API differs (Binance USD-M futures,
    Kraken Futures) and unknown venues raise :class:`UnknownExchangeError`.
    """
    meta = capture.meta if isinstance(capture, Capture) else capture
    name = str(meta.get("exchange", "")).strip().lower()
    if "binance" in name:
        if any(word in name for word in ("usd-m", "usdm", "coin-m", "coinm", "futures", "delivery")):
            raise UnknownExchangeError(f"{meta.get('exchange')!r}: Binance futures are not served by a COBY connector")
        return "binance"
    if "kraken" in name:
        if "futures" in name:
            raise UnknownExchangeError(f"{meta.get('exchange')!r}: Kraken Futures is not served by a COBY connector")
        return "kraken"
    if any(word in name for word in ("okx", "okex", "okcoin")):
        return "okx"
    raise UnknownExchangeError(
        f"capture exchange {meta.get('exchange')!r} has no COBY connector (supported: {', '.join(PROTOCOLS)})"
    )


class SessionSymbols(list):
    """Native symbols a session subscribed to: book symbols first, then trade-only ones.

    It is the list a feed takes as ``native_symbols``; :attr:`book` and
    :attr:`trades` say which channel each came from.
    """

    def __init__(self, book: Sequence[str], trades: Sequence[str]) -> None:
        self.book = list(dict.fromkeys(book))
        self.trades = list(dict.fromkeys(trades))
        super().__init__(dict.fromkeys([*self.book, *self.trades]))

    def as_dict(self) -> dict[str, list[str]]:
        return {"book": list(self.book), "trades": list(self.trades)}


def session_symbols(capture: Capture, protocol: str | None = None) -> SessionSymbols:
    """Which native symbols the session subscribed to, for book and trade channels.

    Read from what the session itself says: Binance stream names in the
    connect URL or ``SUBSCRIBE`` sends, Kraken/OKX subscribe messages; when
    the capture recorded no subscription (e.g. a capture of an already open
    socket), from the frames' channel fields.
    """
    protocol = protocol or protocol_of(capture)
    finder = _SYMBOL_FINDERS.get(protocol)
    if finder is None:
        raise UnknownExchangeError(f"no symbol extraction for protocol {protocol!r} (supported: {', '.join(PROTOCOLS)})")
    book: list[str] = []
    trades: list[str] = []
    finder(capture, book, trades)
    return SessionSymbols(book, trades)


def loads_frame(text: str | bytes) -> object:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


_BINANCE_BOOK = ("depth",)
_BINANCE_TRADES = ("aggTrade", "trade")


def binance_stream_parts(name: str) -> tuple[str, str]:
    """``nknusdt@depth@100ms`` -> ``("NKNUSDT", "depth")``: native symbol and channel kind."""
    symbol, _, channel = name.partition("@")
    return symbol.upper(), channel.split("@", 1)[0]


def _binance_stream(name: str, book: list[str], trades: list[str]) -> None:
    symbol, kind = binance_stream_parts(name)
    if kind.startswith(_BINANCE_BOOK):  # depth, depth@100ms, depth20...
        book.append(symbol)
    elif kind in _BINANCE_TRADES:
        trades.append(symbol)


def _binance_symbols(capture: Capture, book: list[str], trades: list[str]) -> None:
    for rec in capture.records:
        if rec["dir"] == CONNECT:
            for key, value in parse_qsl(urlsplit(rec["url"]).query):
                if key == "streams":
                    for name in value.split("/"):
                        _binance_stream(name, book, trades)
        elif rec["dir"] == SEND:
            msg = loads_frame(rec["data"])
            if isinstance(msg, dict) and msg.get("method") == "SUBSCRIBE":
                for name in msg.get("params") or []:
                    if isinstance(name, str):
                        _binance_stream(name, book, trades)
    for item in capture.meta.get("connections", []):
        for key, value in parse_qsl(urlsplit(item["url"]).query):
            if key == "streams":
                for name in value.split("/"):
                    _binance_stream(name, book, trades)
    if book or trades:
        return
    for rec in capture.recv_records():
        msg = loads_frame(payload(rec))
        data = msg.get("data", msg) if isinstance(msg, dict) else None
        if isinstance(data, dict) and isinstance(data.get("s"), str):
            if data.get("e") == "depthUpdate":
                book.append(data["s"])
            elif data.get("e") in _BINANCE_TRADES:
                trades.append(data["s"])


def _kraken_symbols(capture: Capture, book: list[str], trades: list[str]) -> None:
    for rec in capture.send_records():
        msg = loads_frame(rec["data"])
        if not (isinstance(msg, dict) and msg.get("event") == "subscribe"):
            continue
        name = (msg.get("subscription") or {}).get("name")
        target = book if name == "book" else trades if name == "trade" else None
        if target is not None:
            target.extend(p for p in msg.get("pair") or [] if isinstance(p, str))
    if book or trades:
        return
    for rec in capture.recv_records():
        channel = kraken_channel(loads_frame(payload(rec)))
        if channel is None:
            continue
        name, pair = channel
        if name.startswith("book"):
            book.append(pair)
        elif name == "trade":
            trades.append(pair)


def kraken_channel(msg: object) -> tuple[str, str] | None:
    """``(channelName, pair)`` of a v1 data frame, which is ``[channelID, payload..., channelName, pair]``."""
    if isinstance(msg, list) and len(msg) >= 4 and isinstance(msg[-2], str) and isinstance(msg[-1], str):
        return msg[-2], msg[-1]
    return None


_OKX_BOOK_CHANNELS = frozenset({"books", "books5", "books50-l2-tbt", "books-l2-tbt", "bbo-tbt"})


def okx_inst_id(arg: object) -> str | None:
    """The instrument an ``arg`` (of a subscribe message, event or data frame) names, if any."""
    if isinstance(arg, dict) and isinstance(arg.get("instId"), str):
        return arg["instId"]
    return None


def _okx_arg(arg: object, book: list[str], trades: list[str]) -> None:
    inst_id = okx_inst_id(arg)
    if inst_id is None:
        return
    channel = arg.get("channel")
    if channel in _OKX_BOOK_CHANNELS:
        book.append(inst_id)
    elif channel in ("trades", "trades-all"):
        trades.append(inst_id)


def _okx_symbols(capture: Capture, book: list[str], trades: list[str]) -> None:
    for rec in capture.send_records():
        msg = loads_frame(rec["data"])
        if isinstance(msg, dict) and msg.get("op") == "subscribe":
            for arg in msg.get("args") or []:
                _okx_arg(arg, book, trades)
    if book or trades:
        return
    for rec in capture.recv_records():
        msg = loads_frame(payload(rec))
        if isinstance(msg, dict) and "data" in msg:
            _okx_arg(msg.get("arg"), book, trades)


_SYMBOL_FINDERS = {"binance": _binance_symbols, "kraken": _kraken_symbols, "okx": _okx_symbols}


# -- pacing -------------------------------------------------------------------


def frame_offsets(times: Sequence[float], speed: float | None) -> list[float] | None:
    """Seconds after the stream start at which each frame is due; ``None`` = no pacing.

    Offsets are relative to the first frame and divided by ``speed``, so
    ``speed=1`` reproduces the recorded gaps and ``speed=10`` is ten times faster.
    """
    if speed is None:
        return None
    if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed > 0):
        raise ConfigError(f"replay speed must be a positive number or None (max speed), got {speed!r}")
    if not times:
        return []
    first = times[0]
    return [(t - first) / speed for t in times]


# -- REST matching ------------------------------------------------------------


def _identity(query: Mapping[str, str] | Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    pairs = query.items() if isinstance(query, Mapping) else query
    return tuple(sorted((k, v) for k, v in pairs if k in IDENTIFYING_PARAMS))


def _normal_path(path: str) -> str:
    return path.rstrip("/") or "/"


class _RestIndex:
    """Recorded GET bodies keyed by (path, identifying parameters), in recorded order."""

    def __init__(self, records: Sequence[dict]) -> None:
        self._bodies: dict[tuple[str, tuple], list[str]] = {}
        self._served: dict[tuple[str, tuple], int] = {}
        for rec in records:
            parts = urlsplit(rec["url"])
            key = (_normal_path(parts.path), _identity(parse_qsl(parts.query, keep_blank_values=True)))
            self._bodies.setdefault(key, []).append(rec["data"])

    def lookup(self, path: str, query: Mapping[str, str]) -> str | None:
        key = (_normal_path(path), _identity(query))
        bodies = self._bodies.get(key)
        if bodies is None:
            return None
        n = self._served.get(key, 0)
        self._served[key] = n + 1
        return bodies[min(n, len(bodies) - 1)]

    def __len__(self) -> int:
        return sum(len(b) for b in self._bodies.values())


# -- the backend --------------------------------------------------------------


class CaptureReplayBackend(ExchangeBackend):
    """Replays one :class:`Capture` to WebSocket and REST clients of a local exchange server."""

    def __init__(self, capture: Capture, *, speed: float | None = None, protocol: str | None = None) -> None:
        self.capture = capture
        self.speed = speed
        if protocol is None:
            try:
                protocol = protocol_of(capture)
            except UnknownExchangeError:
                protocol = None  # still replayable: any client message subscribes
        self.protocol = protocol
        recv = [r for r in capture.records if r["dir"] == RECV]
        # Decode once up front: the per-frame send loop does no parsing at all.
        self._frames: list[str | bytes] = [payload(r) for r in recv]
        self._offsets = frame_offsets([r["t"] for r in recv], speed)
        self._rest = _RestIndex([r for r in capture.records if r["dir"] == HTTP])
        #: Set once a client has been sent every frame of the capture (and the socket flushed).
        self.finished = asyncio.Event()
        self.frames_sent = 0
        self.connections = 0
        self.rest_served = 0
        self.rest_missed = 0

    @property
    def frame_count(self) -> int:
        """Frames one full replay sends."""
        return len(self._frames)

    @property
    def offsets(self) -> list[float] | None:
        """Each frame's due time after the stream start (``None`` at max speed)."""
        return None if self._offsets is None else list(self._offsets)

    # -- REST -----------------------------------------------------------------

    async def handle_rest(self, path: str, query: Mapping[str, str]) -> tuple[int, str | bytes, str]:
        body = self._rest.lookup(path, query)
        if body is None:
            self.rest_missed += 1
            shown = "&".join(f"{k}={v}" for k, v in query.items())
            return json_error(404, f"no recorded response for GET {path}{'?' + shown if shown else ''}")
        self.rest_served += 1
        return 200, body, JSON

    # -- WebSocket ------------------------------------------------------------

    async def handle_ws(self, session: WsSession) -> None:
        self.connections += 1
        if self.protocol == "okx":
            session.auto_replies["ping"] = "pong"  # OKX's text keepalive
        if not self._subscribed_by_url(session):
            while True:
                message = await session.receive()
                if message is None:
                    return
                if await self._answer(session, message):
                    break
        stream = asyncio.create_task(self._stream(session), name=f"replay-{self.capture.session}")
        stream.add_done_callback(lambda task: self._on_stream_end(task, session))
        try:
            while (message := await session.receive()) is not None:
                await self._answer(session, message)
        finally:
            if not stream.done():
                stream.cancel()
            try:
                await stream
            except (asyncio.CancelledError, WsSessionClosed):
                pass  # the client left before the end of the capture

    def _subscribed_by_url(self, session: WsSession) -> bool:
        return self.protocol == "binance" and bool(session.query.get("streams"))

    async def _answer(self, session: WsSession, message: str) -> bool:
        """Reply to a client message the way the exchange would; True if it subscribes."""
        if self.protocol == "binance":
            msg = loads_frame(message)
            if isinstance(msg, dict) and msg.get("method") in ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS"):
                await session.send(orjson.dumps({"result": None, "id": msg.get("id")}).decode())
                return msg["method"] == "SUBSCRIBE"
            return False
        if self.protocol == "kraken":
            msg = loads_frame(message)
            if isinstance(msg, dict) and msg.get("event") == "ping":
                reply = {"event": "pong", **({"reqid": msg["reqid"]} if "reqid" in msg else {})}
                await session.send(orjson.dumps(reply).decode())
                return False
        return True

    async def _stream(self, session: WsSession) -> None:
        frames, offsets = self._frames, self._offsets
        send = session.send
        if offsets is None:
            for i, frame in enumerate(frames, start=1):
                await send(frame)
                self.frames_sent += 1
                if i % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        else:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for frame, due in zip(frames, offsets):
                delay = start + due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await send(frame)
                self.frames_sent += 1
        # "Finished" means the client has every frame, not that they sit in our buffer.
        # A slow client gets all the time it needs; a vanished one means not finished.
        while True:
            try:
                await session.flush(timeout=5.0)
                break
            except TimeoutError:
                continue
        if session.closed:
            raise WsSessionClosed("client left before the last frames were delivered")
        self.finished.set()
        log.info("replay of %s finished: %d frames", self.capture.session, len(frames))

    @staticmethod
    def _on_stream_end(task: asyncio.Task, session: WsSession) -> None:
        if task.cancelled() or isinstance(task.exception(), WsSessionClosed) or task.exception() is None:
            return
        # A real failure: end the session so handle_ws returns and the error surfaces.
        log.error("replay stream failed: %r", task.exception())
        asyncio.get_running_loop().create_task(session.close(1011))
