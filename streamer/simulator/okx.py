"""OKX v5 public WebSocket, as the simulator serves it.

* Requests ``{"op": "subscribe"|"unsubscribe", "args": [{"channel", "instId"}], "id"?}``
  answered per argument with ``{"event": "subscribe", "arg": .., "connId": ..}``
  or an ``error`` event (60012 bad request, 60018 unknown channel or
  instrument). The text ``ping`` is answered with ``pong``.
* ``books`` (400 levels): a snapshot (``prevSeqId`` -1) right after the ack,
  then one update per 100 ms with changes, levels ``[px, sz, "0", numOrders]``,
  ``ts``, ``checksum`` (signed CRC32 of the top 25 levels, or 0 with
  ``zero_checksum`` like OKX since 2026) and ``seqId``/``prevSeqId`` chained
  per subscription. Levels leaving the 400-level window are deleted
  explicitly and levels entering it are sent, so a client that never
  truncates holds exactly the top 400.
* ``trades``: one push per fill with ``tradeId``, ``px``, ``sz``, ``side``
  (the taker's), ``ts``, ``count``, ``source`` and ``seqId``.
* REST ``/api/v5/public/instruments?instType=SPOT``, ``/api/v5/market/books``
  and ``/api/v5/public/time``.

Numbers are written without trailing zeros, as OKX does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import orjson

from ..exchanges.okx.checksum import okx_checksum
from .market import LevelChange, MarketEvent, MarketSimulator, MarketTrade, SimBook, SimSymbol
from .protocols import BookWindow, PendingChanges, ProtocolRenderer, dumps, trim_decimals

JSON = "application/json"
BOOK_DEPTH = 400
CHECKSUM_LEVELS = 25
FLUSH_US = 100_000
MAX_REST_DEPTH = 400


def native_symbol(spec: SimSymbol) -> str:
    return f"{spec.base}-{spec.quote}"


@dataclass(slots=True)
class _BooksSub:
    inst_id: str
    book: SimBook
    asks: BookWindow
    bids: BookWindow
    next_flush_us: int
    seq_id: int = -1
    pending: PendingChanges = field(default_factory=PendingChanges)


class OkxRenderer(ProtocolRenderer):
    protocol = "okx"

    def __init__(self, market: MarketSimulator, *, path: str, query: Mapping[str, str], connection_id: int,
                 zero_checksum: bool = False) -> None:
        super().__init__(market, path=path, query=query, connection_id=connection_id)
        self.zero_checksum = zero_checksum
        self._instruments = {native_symbol(spec): market.book(spec.symbol) for spec in market.symbols}
        self._conn_id = f"{random.Random(f'okx-conn:{market.seed}:{connection_id}').getrandbits(32):08x}"
        self._books: dict[str, _BooksSub] = {}  # by normalized symbol
        self._trades: dict[str, str] = {}  # normalized symbol -> instId
        self.auto_replies = {"ping": "pong"}

    # -- requests ---------------------------------------------------------------
    def _error(self, code: str, msg: str, req_id=None) -> str:
        body: dict = {}
        if req_id is not None:
            body["id"] = req_id
        body.update({"event": "error", "code": code, "msg": msg, "connId": self._conn_id})
        return dumps(body)

    def on_message(self, text: str, now_us: int) -> list[str]:
        if text == "ping":
            return ["pong"]
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            return [self._error("60012", f"Invalid request: {text[:200]}")]
        if not isinstance(request, dict):
            return [self._error("60012", f"Invalid request: {text[:200]}")]
        req_id = request.get("id")
        op = request.get("op")
        args = request.get("args")
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list) or not args:
            return [self._error("60012", f"Invalid request: {text[:200]}", req_id)]
        out: list[str] = []
        for arg in args:
            if not isinstance(arg, dict) or not isinstance(arg.get("channel"), str) \
                    or not isinstance(arg.get("instId"), str):
                out.append(self._error("60012", f"Invalid request: {text[:200]}", req_id))
                continue
            channel, inst_id = arg["channel"], arg["instId"]
            book = self._instruments.get(inst_id)
            if book is None or channel not in ("books", "trades"):
                out.append(self._error(
                    "60018",
                    f"Wrong URL or channel:{channel},instId:{inst_id} doesn't exist. "
                    "Please use the correct URL, channel and parameters referring to API document.",
                    req_id,
                ))
                continue
            ack: dict = {}
            if req_id is not None:
                ack["id"] = req_id
            ack.update({"event": op, "arg": {"channel": channel, "instId": inst_id}, "connId": self._conn_id})
            out.append(dumps(ack))
            if op == "subscribe":
                if channel == "books":
                    sub = _BooksSub(inst_id, book, BookWindow(book, "ask", BOOK_DEPTH),
                                    BookWindow(book, "bid", BOOK_DEPTH), now_us + FLUSH_US)
                    self._books[book.symbol] = sub  # a repeated subscribe restarts with a new snapshot
                    out.append(self._snapshot(sub, now_us))
                else:
                    self._trades[book.symbol] = inst_id
            elif channel == "books":
                self._books.pop(book.symbol, None)
            else:
                self._trades.pop(book.symbol, None)
        return out

    # -- book frames ------------------------------------------------------------
    def checksum(self, book: SimBook) -> int:
        """The ``checksum`` of the book's current top 25, over the strings this renderer sends."""
        if self.zero_checksum:
            return 0
        bids = [(trim_decimals(p), trim_decimals(s)) for p, s in book.levels("bid", CHECKSUM_LEVELS)]
        asks = [(trim_decimals(p), trim_decimals(s)) for p, s in book.levels("ask", CHECKSUM_LEVELS)]
        return okx_checksum(bids, asks)

    @staticmethod
    def _row(price: str, size: str, lots: int, orders: int) -> list[str]:
        if lots == 0:
            return [trim_decimals(price), "0", "0", "0"]
        return [trim_decimals(price), trim_decimals(size), "0", str(orders)]

    def _frame(self, sub: _BooksSub, action: str, asks: list, bids: list, now_us: int) -> str:
        prev = sub.seq_id if action == "update" else -1
        sub.seq_id = sub.book.seq
        return dumps({
            "arg": {"channel": "books", "instId": sub.inst_id},
            "action": action,
            "data": [{
                "asks": asks,
                "bids": bids,
                "ts": str(now_us // 1000),
                "checksum": self.checksum(sub.book),
                "prevSeqId": prev,
                "seqId": sub.seq_id,
            }],
        })

    def _snapshot(self, sub: _BooksSub, now_us: int) -> str:
        row = self._row
        asks = [row(price, size, lots, n) for _, price, size, lots, n, _ in sub.asks.snapshot()]
        bids = [row(price, size, lots, n) for _, price, size, lots, n, _ in sub.bids.snapshot()]
        sub.pending.clear()
        return self._frame(sub, "snapshot", asks, bids, now_us)

    def _update(self, sub: _BooksSub, now_us: int) -> str | None:
        ask_levels = sub.asks.diff(sub.pending.ask, True)
        bid_levels = sub.bids.diff(sub.pending.bid, True)
        sub.pending.clear()
        if not ask_levels and not bid_levels:
            return None  # only changes outside the window; the next update links to the last one sent
        ask_levels.sort()
        bid_levels.sort(reverse=True)
        row = self._row
        asks = [row(price, size, lots, n) for _, price, size, lots, n, _, _ in ask_levels]
        bids = [row(price, size, lots, n) for _, price, size, lots, n, _, _ in bid_levels]
        return self._frame(sub, "update", asks, bids, now_us)

    # -- market data ------------------------------------------------------------
    def on_market(self, events: Sequence[MarketEvent], now_us: int) -> list[str]:
        if not self._books and not self._trades:
            return []
        out: list[str] = []
        books, trades = self._books, self._trades
        for event in events:
            if type(event) is LevelChange:
                sub = books.get(event.symbol)
                if sub is not None:
                    sub.pending.add(event)
            elif type(event) is MarketTrade:
                inst_id = trades.get(event.symbol)
                if inst_id is not None:
                    out.append(self._trade_frame(inst_id, event))
        for sub in books.values():
            if now_us >= sub.next_flush_us:
                if sub.pending:
                    frame = self._update(sub, now_us)
                    if frame is not None:
                        out.append(frame)
                periods = (now_us - sub.next_flush_us) // FLUSH_US + 1
                sub.next_flush_us += periods * FLUSH_US
        return out

    def _trade_frame(self, inst_id: str, trade: MarketTrade) -> str:
        return dumps({
            "arg": {"channel": "trades", "instId": inst_id},
            "data": [{
                "instId": inst_id,
                "tradeId": str(trade.trade_id),
                "px": trim_decimals(trade.price),
                "sz": trim_decimals(trade.size),
                "side": trade.taker_side,
                "ts": str(trade.ts_us // 1000),
                "count": "1",
                "source": "0",
                "seqId": trade.trade_id,
            }],
        })


# ---------------------------------------------------------------------------
# REST
# ---------------------------------------------------------------------------


def _instrument(spec: SimSymbol) -> dict:
    return {
        "alias": "", "baseCcy": spec.base, "category": "1", "ctMult": "", "ctType": "", "ctVal": "",
        "ctValCcy": "", "expTime": "", "instFamily": "", "instId": native_symbol(spec), "instType": "SPOT",
        "lever": "10", "listTime": "1548133413000", "lotSz": format(spec.lot_size, "f"),
        "maxIcebergSz": "9999999999", "maxLmtSz": "9999999999", "maxMktSz": "1000000",
        "maxStopSz": "1000000", "maxTriggerSz": "9999999999", "maxTwapSz": "9999999999",
        "minSz": format(spec.lot_size, "f"), "optType": "", "quoteCcy": spec.quote, "settleCcy": "",
        "state": "live", "stk": "", "tickSz": format(spec.tick_size, "f"), "uly": "",
    }


def _answer(data: list, *, code: str = "0", msg: str = "", status: int = 200) -> tuple[int, str, str]:
    return status, dumps({"code": code, "data": data, "msg": msg}), JSON


def handle_rest(market: MarketSimulator, path: str, query: Mapping[str, str], now_us: int) -> tuple[int, str, str]:
    """Answer one OKX REST GET."""
    path = path.rstrip("/")
    if path == "/api/v5/public/instruments":
        inst_type = query.get("instType")
        if not inst_type:
            return _answer([], code="50014", msg="Parameter instType can not be empty.", status=400)
        if inst_type != "SPOT":
            return _answer([])  # nothing but spot is simulated
        specs = list(market.symbols)
        if "instId" in query:
            specs = [s for s in specs if native_symbol(s) == query["instId"]]
        return _answer([_instrument(s) for s in specs])
    if path == "/api/v5/market/books":
        inst_id = query.get("instId", "")
        spec = next((s for s in market.symbols if native_symbol(s) == inst_id), None)
        if spec is None:
            return _answer([], code="51001", msg="Instrument ID does not exist.", status=400)
        raw = query.get("sz", "1")
        size = int(raw) if raw.isdigit() and int(raw) > 0 else 1
        book = market.book(spec.symbol)
        levels = {
            side: [[trim_decimals(price), trim_decimals(sz), "0", str(n)]
                   for _, price, sz, _, n, _ in book.rows(side, min(size, MAX_REST_DEPTH))]
            for side in ("ask", "bid")
        }
        return _answer([{"asks": levels["ask"], "bids": levels["bid"], "ts": str(now_us // 1000)}])
    if path == "/api/v5/public/time":
        return _answer([{"ts": str(now_us // 1000)}])
    return _answer([], code="50030", msg=f"Illegal request: {path}", status=404)
