"""Binance spot, as the simulator serves it.

WebSocket (market streams):

* ``/stream?streams=a/b`` (combined: every frame is ``{"stream":..,"data":..}``),
  ``/ws/a/b`` and ``/ws`` (raw payloads); ``SUBSCRIBE``, ``UNSUBSCRIBE`` and
  ``LIST_SUBSCRIPTIONS`` requests with ``{"result":..,"id":..}`` answers.
* ``<sym>@depth@100ms`` and ``<sym>@depth`` (1000 ms): ``depthUpdate`` diffs of
  the whole book. Every book change has its own update id, so each event
  covers ``U..u`` and the next one starts at ``u + 1``.
* ``<sym>@trade`` (``m`` = the buyer is the maker, i.e. the taker sold),
  ``<sym>@aggTrade`` and ``<sym>@bookTicker``.

REST: ``/api/v3/depth?symbol=&limit=`` (``lastUpdateId`` is the id of the last
change in the book served, so it bridges with the diff stream exactly as on
Binance), ``/api/v3/exchangeInfo``, ``/api/v3/ping``, ``/api/v3/time``.
Prices and sizes carry 8 decimals, as on Binance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import orjson

from ..errors import ConfigError
from .market import LevelChange, MarketEvent, MarketSimulator, MarketTrade, SimBook, SimSymbol
from .protocols import ProtocolRenderer, dumps, pad_decimals

JSON = "application/json"
DECIMALS = 8
MAX_DEPTH_LIMIT = 5000
CLOSE_POLICY = 1008


def native_symbol(spec: SimSymbol) -> str:
    return f"{spec.base}{spec.quote}"


def check_symbols(market: MarketSimulator) -> None:
    """Raise ConfigError for symbols Binance's 8-decimal strings cannot carry."""
    for spec in market.symbols:
        if spec.price_decimals > DECIMALS or spec.size_decimals > DECIMALS:
            raise ConfigError(f"{spec.symbol}: Binance writes 8 decimals; the symbol has more")


def _fmt(value: str) -> str:
    return pad_decimals(value, DECIMALS)


@dataclass(slots=True)
class _DepthStream:
    """One ``@depth`` subscription: the changes since the last event."""

    name: str
    book: SimBook
    interval_us: int
    next_flush_us: int
    bid: dict[int, tuple[str, str]] = field(default_factory=dict)
    ask: dict[int, tuple[str, str]] = field(default_factory=dict)
    first_id: int | None = None
    last_id: int | None = None


class BinanceRenderer(ProtocolRenderer):
    protocol = "binance"

    def __init__(self, market: MarketSimulator, *, path: str, query: Mapping[str, str], connection_id: int) -> None:
        super().__init__(market, path=path, query=query, connection_id=connection_id)
        check_symbols(market)
        self._books = {native_symbol(spec).lower(): market.book(spec.symbol) for spec in market.symbols}
        self._combined = path.rstrip("/").startswith("/stream")
        self._streams: list[str] = []
        self._depth: dict[str, _DepthStream] = {}
        self._depth_by_symbol: dict[str, list[_DepthStream]] = {}
        self._trade: dict[str, str] = {}  # symbol -> stream name
        self._agg: dict[str, str] = {}
        self._ticker: dict[str, str] = {}
        self._ticker_last: dict[str, tuple] = {}
        self._initial: list[str] = []
        parts = [p for p in path.split("/") if p]
        if self._combined:
            self._initial = [s for s in query.get("streams", "").split("/") if s]
        elif parts[:1] == ["ws"]:
            self._initial = parts[1:]
        else:
            self.close(CLOSE_POLICY, f"unknown path {path!r}: use /stream?streams=... or /ws")

    # -- subscriptions ----------------------------------------------------------
    def _parse(self, stream: str) -> tuple[str, str] | None:
        """``(symbol_lower, kind)`` of a stream name, or None when it is not served."""
        symbol, _, kind = stream.partition("@")
        if symbol not in self._books:
            return None
        kind_key = kind.lower()
        if kind_key in ("depth", "depth@1000ms", "depth@100ms", "trade", "aggtrade", "bookticker"):
            return symbol, kind_key
        return None

    def _subscribe(self, stream: str, now_us: int) -> bool:
        parsed = self._parse(stream)
        if parsed is None:
            return False
        if stream in self._streams:
            return True
        symbol, kind = parsed
        book = self._books[symbol]
        if kind.startswith("depth"):
            interval = 100_000 if kind == "depth@100ms" else 1_000_000
            depth = _DepthStream(stream, book, interval, now_us + interval)
            self._depth[stream] = depth
            self._depth_by_symbol.setdefault(book.symbol, []).append(depth)
        elif kind == "trade":
            self._trade[book.symbol] = stream
        elif kind == "aggtrade":
            self._agg[book.symbol] = stream
        else:
            self._ticker[book.symbol] = stream
            self._ticker_last.pop(book.symbol, None)
        self._streams.append(stream)
        return True

    def _unsubscribe(self, stream: str) -> None:
        if stream not in self._streams:
            return
        self._streams.remove(stream)
        depth = self._depth.pop(stream, None)
        if depth is not None:
            siblings = self._depth_by_symbol[depth.book.symbol]
            siblings.remove(depth)
            if not siblings:
                del self._depth_by_symbol[depth.book.symbol]
        for table in (self._trade, self._agg, self._ticker):
            for symbol, name in list(table.items()):
                if name == stream:
                    del table[symbol]

    def on_connect(self, now_us: int) -> list[str]:
        unknown = [s for s in self._initial if not self._subscribe(s, now_us)]
        if unknown:
            self.close(CLOSE_POLICY, f"invalid stream name(s): {', '.join(unknown)}"[:120])
        return []

    def on_message(self, text: str, now_us: int) -> list[str]:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            return [dumps({"error": {"code": 3, "msg": "Invalid JSON: expected value"}, "id": None})]
        if not isinstance(request, dict):
            return [dumps({"error": {"code": 2, "msg": "Invalid request: request must be an object"}, "id": None})]
        req_id = request.get("id")
        method = request.get("method")
        params = request.get("params", [])
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                return [dumps({"error": {"code": 2, "msg": "Invalid request: params must be a list of stream names"},
                               "id": req_id})]
            if method == "SUBSCRIBE":
                bad = [p for p in params if self._parse(p) is None]
                if bad:
                    return [dumps({"error": {"code": 2, "msg": f"Invalid request: invalid stream {bad[0]}"},
                                   "id": req_id})]
                for stream in params:
                    self._subscribe(stream, now_us)
            else:
                for stream in params:
                    self._unsubscribe(stream)
            return [dumps({"result": None, "id": req_id})]
        if method == "LIST_SUBSCRIPTIONS":
            return [dumps({"result": list(self._streams), "id": req_id})]
        return [dumps({"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"}, "id": req_id})]

    # -- market data ------------------------------------------------------------
    def _wrap(self, stream: str, data: dict) -> str:
        return dumps({"stream": stream, "data": data} if self._combined else data)

    def on_market(self, events: Sequence[MarketEvent], now_us: int) -> list[str]:
        if not self._streams:
            return []
        out: list[str] = []
        by_symbol = self._depth_by_symbol
        trade, agg = self._trade, self._agg
        for event in events:
            if type(event) is LevelChange:
                streams = by_symbol.get(event.symbol)
                if streams:
                    for stream in streams:
                        levels = stream.bid if event.side == "bid" else stream.ask
                        levels[event.ticks] = (event.price, event.size)
                        if stream.first_id is None:
                            stream.first_id = event.seq
                        stream.last_id = event.seq
            elif type(event) is MarketTrade:
                if event.symbol in trade:
                    out.append(self._trade_frame(trade[event.symbol], event))
                if event.symbol in agg:
                    out.append(self._agg_frame(agg[event.symbol], event))
        for stream in self._depth.values():
            if now_us >= stream.next_flush_us:
                if stream.first_id is not None:
                    out.append(self._depth_frame(stream, now_us))
                # Stay on the subscription's grid; skip missed slots rather than bursting.
                periods = (now_us - stream.next_flush_us) // stream.interval_us + 1
                stream.next_flush_us += periods * stream.interval_us
        if self._ticker:
            out.extend(self._ticker_frames())
        return out

    def _depth_frame(self, stream: _DepthStream, now_us: int) -> str:
        def levels(pending: dict[int, tuple[str, str]]) -> list[list[str]]:
            return [[_fmt(price), _fmt(size)] for price, size in pending.values()]

        data = {
            "e": "depthUpdate",
            "E": now_us // 1000,
            "s": stream.book.symbol.replace("-", ""),
            "U": stream.first_id,
            "u": stream.last_id,
            "b": levels(stream.bid),
            "a": levels(stream.ask),
        }
        stream.bid.clear()
        stream.ask.clear()
        stream.first_id = stream.last_id = None
        return self._wrap(stream.name, data)

    def _trade_frame(self, stream: str, trade: MarketTrade) -> str:
        ms = trade.ts_us // 1000
        return self._wrap(stream, {
            "e": "trade", "E": ms, "s": trade.symbol.replace("-", ""), "t": trade.trade_id,
            "p": _fmt(trade.price), "q": _fmt(trade.size), "T": ms,
            "m": trade.taker_side == "sell", "M": True,
        })

    def _agg_frame(self, stream: str, trade: MarketTrade) -> str:
        # Each fill is at its own price level, so every aggregate holds one trade.
        ms = trade.ts_us // 1000
        return self._wrap(stream, {
            "e": "aggTrade", "E": ms, "s": trade.symbol.replace("-", ""), "a": trade.trade_id,
            "p": _fmt(trade.price), "q": _fmt(trade.size), "f": trade.trade_id, "l": trade.trade_id,
            "T": ms, "m": trade.taker_side == "sell", "M": True,
        })

    def _ticker_frames(self) -> list[str]:
        out = []
        for symbol, stream in self._ticker.items():
            book = self.market.book(symbol)
            bids, asks = book.top("bid", 1), book.top("ask", 1)
            if not bids or not asks:
                continue
            top = (bids[0][0], bids[0][1], asks[0][0], asks[0][1])
            if self._ticker_last.get(symbol) == top:
                continue
            self._ticker_last[symbol] = top
            out.append(self._wrap(stream, {
                "u": book.seq, "s": symbol.replace("-", ""),
                "b": _fmt(book.price_str(top[0])), "B": _fmt(book.size_str(top[1])),
                "a": _fmt(book.price_str(top[2])), "A": _fmt(book.size_str(top[3])),
            }))
        return out


# ---------------------------------------------------------------------------
# REST
# ---------------------------------------------------------------------------


def _error(status: int, code: int, msg: str) -> tuple[int, str, str]:
    return status, dumps({"code": code, "msg": msg}), JSON


def _book_for(market: MarketSimulator, native: str) -> SimBook | None:
    for spec in market.symbols:
        if native_symbol(spec) == native.upper():
            return market.book(spec.symbol)
    return None


def depth_snapshot(market: MarketSimulator, native: str, limit: int = 100) -> dict | None:
    """The ``/api/v3/depth`` body for a symbol at the market's current state."""
    book = _book_for(market, native)
    if book is None:
        return None
    return {
        "lastUpdateId": book.seq,
        "bids": [[_fmt(p), _fmt(s)] for p, s in book.levels("bid", limit)],
        "asks": [[_fmt(p), _fmt(s)] for p, s in book.levels("ask", limit)],
    }


def _symbol_info(spec: SimSymbol) -> dict:
    return {
        "symbol": native_symbol(spec),
        "status": "TRADING",
        "baseAsset": spec.base,
        "baseAssetPrecision": 8,
        "quoteAsset": spec.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": _fmt(format(spec.tick_size, "f")),
             "maxPrice": "1000000.00000000", "tickSize": _fmt(format(spec.tick_size, "f"))},
            {"filterType": "LOT_SIZE", "minQty": _fmt(format(spec.lot_size, "f")),
             "maxQty": "9000.00000000", "stepSize": _fmt(format(spec.lot_size, "f"))},
        ],
        "permissions": ["SPOT"],
    }


def handle_rest(market: MarketSimulator, path: str, query: Mapping[str, str], now_us: int) -> tuple[int, str, str]:
    """Answer one Binance REST GET."""
    path = path.rstrip("/")
    if path == "/api/v3/depth":
        native = query.get("symbol")
        if not native:
            return _error(400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        raw_limit = query.get("limit", "100")
        if not raw_limit.isdigit() or int(raw_limit) < 1:
            return _error(400, -1100, "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.")
        body = depth_snapshot(market, native, min(int(raw_limit), MAX_DEPTH_LIMIT))
        if body is None:
            return _error(400, -1121, "Invalid symbol.")
        return 200, dumps(body), JSON
    if path == "/api/v3/exchangeInfo":
        specs = list(market.symbols)
        wanted: list[str] | None = None
        if "symbol" in query:
            wanted = [query["symbol"].upper()]
        elif "symbols" in query:
            try:
                parsed = orjson.loads(query["symbols"])
            except orjson.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, list) or not all(isinstance(s, str) for s in parsed):
                return _error(400, -1100, "Illegal characters found in parameter 'symbols'.")
            wanted = [s.upper() for s in parsed]
        if wanted is not None:
            known = {native_symbol(s): s for s in specs}
            missing = [w for w in wanted if w not in known]
            if missing:
                return _error(400, -1121, "Invalid symbol.")
            specs = [known[w] for w in wanted]
        return 200, dumps({
            "timezone": "UTC",
            "serverTime": now_us // 1000,
            "rateLimits": [],
            "exchangeFilters": [],
            "symbols": [_symbol_info(s) for s in specs],
        }), JSON
    if path == "/api/v3/ping":
        return 200, "{}", JSON
    if path == "/api/v3/time":
        return 200, dumps({"serverTime": now_us // 1000}), JSON
    return _error(404, -1000, f"Unknown endpoint {path}")
