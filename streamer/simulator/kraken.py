"""Kraken spot WebSocket v1, as the simulator serves it.

* On connect: ``systemStatus``. Requests: ``subscribe`` / ``unsubscribe``
  (``book`` with depth 10, 25, 100, 500 or 1000; ``trade``) answered by
  ``subscriptionStatus``; ``ping`` -> ``pong``. ``heartbeat`` after a second
  without subscription traffic.
* ``book``: a snapshot ``[channelID, {"as": .., "bs": ..}, "book-N", pair]`` of
  the subscribed depth, then updates with ``[price, volume, timestamp]``
  levels and the CRC32 ``c`` of the top 10 of each side. Updates follow
  Kraken's rules for a depth-N client: levels pushed out of the window are
  not sent (the client truncates to N), and when a level inside the window
  goes, the level that moves in is sent, marked ``"r"`` (republished).
* ``trade``: ``[channelID, [[price, volume, time, side, orderType, misc]], "trade", pair]``.
* REST ``/0/public/AssetPairs`` (optionally ``?pair=``), ``/0/public/Time``,
  ``/0/public/SystemStatus``.

Pairs use Kraken's asset codes (``XBT/USD``); volumes carry 8 decimals and
prices the pair's decimals.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import formatdate
from typing import Mapping, Sequence

import orjson

from ..errors import ConfigError
from ..exchanges.kraken.checksum import kraken_checksum
from .market import LevelChange, MarketEvent, MarketSimulator, MarketTrade, SimBook, SimSymbol
from .protocols import BookWindow, PendingChanges, ProtocolRenderer, dumps, pad_decimals, seconds_str

JSON = "application/json"
VOLUME_DECIMALS = 8
BOOK_DEPTHS = (10, 25, 100, 500, 1000)
CHECKSUM_LEVELS = 10
HEARTBEAT_US = 1_000_000
WS_VERSION = "1.9.5"

#: Kraken's own names for some assets (BTC is XBT on Kraken).
_KRAKEN_ASSET = {"BTC": "XBT", "DOGE": "XDG"}
#: Assets with Kraken's legacy X/Z-prefixed REST codes (XXBT, ZUSD, ...).
_LEGACY_CRYPTO = {"XBT", "ETH", "LTC", "XRP", "XLM", "XMR", "ETC", "ZEC", "MLN", "REP", "XDG"}
_LEGACY_FIAT = {"USD", "EUR", "GBP", "JPY", "CAD", "AUD"}


def kraken_asset(asset: str) -> str:
    return _KRAKEN_ASSET.get(asset, asset)


def native_symbol(spec: SimSymbol) -> str:
    """The WebSocket pair name (``wsname``): ``XBT/USD``."""
    return f"{kraken_asset(spec.base)}/{kraken_asset(spec.quote)}"


def _rest_code(asset: str) -> str:
    if asset in _LEGACY_CRYPTO:
        return "X" + asset
    if asset in _LEGACY_FIAT:
        return "Z" + asset
    return asset


def check_symbols(market: MarketSimulator) -> None:
    """Raise ConfigError for symbols Kraken's 8-decimal volumes cannot carry."""
    for spec in market.symbols:
        if spec.size_decimals > VOLUME_DECIMALS:
            raise ConfigError(f"{spec.symbol}: Kraken writes 8 volume decimals; the symbol has more")


def _volume(size: str) -> str:
    return pad_decimals(size, VOLUME_DECIMALS)


@dataclass(slots=True)
class _BookSub:
    channel_id: int
    depth: int
    pair: str
    book: SimBook
    asks: BookWindow
    bids: BookWindow

    @property
    def channel_name(self) -> str:
        return f"book-{self.depth}"


@dataclass(slots=True)
class _TradeSub:
    channel_id: int
    pair: str


class KrakenRenderer(ProtocolRenderer):
    protocol = "kraken"

    def __init__(self, market: MarketSimulator, *, path: str, query: Mapping[str, str], connection_id: int) -> None:
        super().__init__(market, path=path, query=query, connection_id=connection_id)
        check_symbols(market)
        self._pairs = {native_symbol(spec): market.book(spec.symbol) for spec in market.symbols}
        rng = random.Random(f"kraken-conn:{market.seed}:{connection_id}")
        self._connection_key = rng.getrandbits(64)
        self._next_channel = rng.randrange(100, 5000)
        self._channel_step = rng.randrange(1, 8)
        self._books: dict[str, _BookSub] = {}  # by normalized symbol
        self._trades: dict[str, _TradeSub] = {}
        self._last_sent_us = 0

    # -- requests ---------------------------------------------------------------
    def on_connect(self, now_us: int) -> list[str]:
        self._last_sent_us = now_us
        return [dumps({"connectionID": self._connection_key, "event": "systemStatus",
                       "status": "online", "version": WS_VERSION})]

    def _status(self, *, pair: str | None, reqid, status: str, subscription: dict,
                channel_id: int | None = None, channel_name: str | None = None, error: str | None = None) -> str:
        # Kraken writes these keys in alphabetical order.
        msg: dict = {}
        if channel_id is not None:
            msg["channelID"] = channel_id
            msg["channelName"] = channel_name
        if error is not None:
            msg["errorMessage"] = error
        msg["event"] = "subscriptionStatus"
        if pair is not None:
            msg["pair"] = pair
        if reqid is not None:
            msg["reqid"] = reqid
        msg["status"] = status
        msg["subscription"] = dict(sorted(subscription.items()))
        return dumps(msg)

    def on_message(self, text: str, now_us: int) -> list[str]:
        out = self._handle(text, now_us)
        if out:
            self._last_sent_us = now_us
        return out

    def _handle(self, text: str, now_us: int) -> list[str]:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            return [dumps({"errorMessage": "Malformed request", "event": "error"})]
        if not isinstance(request, dict):
            return [dumps({"errorMessage": "Malformed request", "event": "error"})]
        event = request.get("event")
        reqid = request.get("reqid")
        if event == "ping":
            reply: dict = {"event": "pong"}
            if reqid is not None:
                reply["reqid"] = reqid
            return [dumps(reply)]
        if event not in ("subscribe", "unsubscribe"):
            return [dumps({"errorMessage": "Unsupported event", "event": "error"})]
        subscription = request.get("subscription")
        pairs = request.get("pair")
        if not isinstance(subscription, dict):
            return [self._status(pair=None, reqid=reqid, status="error", subscription={},
                                 error="Subscription field must be an object")]
        if not isinstance(pairs, list) or not pairs or not all(isinstance(p, str) for p in pairs):
            return [self._status(pair=None, reqid=reqid, status="error", subscription=subscription,
                                 error="Pair field must be an array of currency pairs")]
        name = subscription.get("name")
        if name not in ("book", "trade"):
            return [self._status(pair=None, reqid=reqid, status="error", subscription=subscription,
                                 error="Subscription name invalid")]
        depth = 10
        if name == "book":
            depth = subscription.get("depth", 10)
            if type(depth) is not int or depth not in BOOK_DEPTHS:
                return [self._status(pair=None, reqid=reqid, status="error", subscription=subscription,
                                     error="Subscription depth not supported")]
        out: list[str] = []
        for pair in pairs:
            book = self._pairs.get(pair)
            if book is None:
                out.append(self._status(pair=pair, reqid=reqid, status="error", subscription=subscription,
                                        error=f"Currency pair not supported {pair}"))
            elif event == "subscribe":
                out.extend(self._subscribe(name, pair, book, depth, reqid, now_us))
            else:
                out.extend(self._unsubscribe(name, pair, book, reqid))
        return out

    def _channel(self) -> int:
        self._next_channel += self._channel_step
        return self._next_channel

    def _subscribe(self, name: str, pair: str, book: SimBook, depth: int, reqid, now_us: int) -> list[str]:
        if name == "trade":
            if book.symbol in self._trades:
                return [self._status(pair=pair, reqid=reqid, status="error", subscription={"name": name},
                                     error="Already subscribed")]
            sub = _TradeSub(self._channel(), pair)
            self._trades[book.symbol] = sub
            return [self._status(pair=pair, reqid=reqid, status="subscribed", subscription={"name": name},
                                 channel_id=sub.channel_id, channel_name="trade")]
        if book.symbol in self._books:
            return [self._status(pair=pair, reqid=reqid, status="error",
                                 subscription={"depth": depth, "name": name}, error="Already subscribed")]
        sub = _BookSub(self._channel(), depth, pair, book, BookWindow(book, "ask", depth), BookWindow(book, "bid", depth))
        self._books[book.symbol] = sub
        ack = self._status(pair=pair, reqid=reqid, status="subscribed", subscription={"depth": depth, "name": name},
                           channel_id=sub.channel_id, channel_name=sub.channel_name)
        return [ack, self._snapshot(sub)]

    def _unsubscribe(self, name: str, pair: str, book: SimBook, reqid) -> list[str]:
        if name == "trade":
            sub = self._trades.pop(book.symbol, None)
            if sub is None:
                return [self._status(pair=pair, reqid=reqid, status="error", subscription={"name": name},
                                     error="Subscription Not Found")]
            return [self._status(pair=pair, reqid=reqid, status="unsubscribed", subscription={"name": name},
                                 channel_id=sub.channel_id, channel_name="trade")]
        book_sub = self._books.pop(book.symbol, None)
        if book_sub is None:
            return [self._status(pair=pair, reqid=reqid, status="error", subscription={"name": name},
                                 error="Subscription Not Found")]
        return [self._status(pair=pair, reqid=reqid, status="unsubscribed",
                             subscription={"depth": book_sub.depth, "name": name},
                             channel_id=book_sub.channel_id, channel_name=book_sub.channel_name)]

    # -- book frames ------------------------------------------------------------
    @staticmethod
    def _level(price: str, size: str, ts_us: int, republished: bool = False) -> list[str]:
        level = [price, _volume(size), seconds_str(ts_us)]
        if republished:
            level.append("r")
        return level

    def _snapshot(self, sub: _BookSub) -> str:
        level = self._level
        asks = [level(price, size, ts) for _, price, size, _, _, ts in sub.asks.snapshot()]
        bids = [level(price, size, ts) for _, price, size, _, _, ts in sub.bids.snapshot()]
        return dumps([sub.channel_id, {"as": asks, "bs": bids}, sub.channel_name, sub.pair])

    def checksum(self, book: SimBook) -> int:
        """The ``c`` of the book's current top 10, over the strings this renderer sends."""
        asks = [(p, _volume(s)) for p, s in book.levels("ask", CHECKSUM_LEVELS)]
        bids = [(p, _volume(s)) for p, s in book.levels("bid", CHECKSUM_LEVELS)]
        return kraken_checksum(asks, bids)

    def _update(self, sub: _BookSub, changes: PendingChanges) -> str | None:
        book = sub.book
        level = self._level
        asks = [level(price, size, ts, r) for _, price, size, _, _, ts, r in sub.asks.diff(changes.ask, False)]
        bids = [level(price, size, ts, r) for _, price, size, _, _, ts, r in sub.bids.diff(changes.bid, False)]
        if not asks and not bids:
            return None
        c = str(self.checksum(book))
        if asks and bids:
            parts: list = [{"a": asks}, {"b": bids, "c": c}]
        elif asks:
            parts = [{"a": asks, "c": c}]
        else:
            parts = [{"b": bids, "c": c}]
        return dumps([sub.channel_id, *parts, sub.channel_name, sub.pair])

    # -- market data ------------------------------------------------------------
    def on_market(self, events: Sequence[MarketEvent], now_us: int) -> list[str]:
        out: list[str] = []
        if events and (self._books or self._trades):
            changes: dict[str, PendingChanges] = {}
            trades: dict[str, list] = {}
            books, trade_subs = self._books, self._trades
            for event in events:
                if type(event) is LevelChange:
                    if event.symbol in books:
                        pending = changes.get(event.symbol)
                        if pending is None:
                            pending = changes[event.symbol] = PendingChanges()
                        pending.add(event)
                elif type(event) is MarketTrade and event.symbol in trade_subs:
                    trades.setdefault(event.symbol, []).append(event)
            for symbol, pending in changes.items():
                frame = self._update(books[symbol], pending)
                if frame is not None:
                    out.append(frame)
            for symbol, fills in trades.items():
                sub = trade_subs[symbol]
                rows = [[t.price, _volume(t.size), seconds_str(t.ts_us), "b" if t.taker_side == "buy" else "s",
                         "l" if t.order_id % 5 == 0 else "m", ""] for t in fills]
                out.append(dumps([sub.channel_id, rows, "trade", sub.pair]))
        if out:
            self._last_sent_us = now_us
        elif (self._books or self._trades) and now_us - self._last_sent_us >= HEARTBEAT_US:
            self._last_sent_us = now_us
            out.append('{"event":"heartbeat"}')
        return out


# ---------------------------------------------------------------------------
# REST
# ---------------------------------------------------------------------------


def _pair_info(spec: SimSymbol) -> tuple[str, dict]:
    base, quote = kraken_asset(spec.base), kraken_asset(spec.quote)
    altname = base + quote
    base_code, quote_code = _rest_code(base), _rest_code(quote)
    legacy = base_code != base and quote_code != quote
    key = base_code + quote_code if legacy else altname
    return key, {
        "altname": altname,
        "wsname": f"{base}/{quote}",
        "aclass_base": "currency",
        "base": base_code,
        "aclass_quote": "currency",
        "quote": quote_code,
        "lot": "unit",
        "cost_decimals": 5,
        "pair_decimals": spec.price_decimals,
        "lot_decimals": VOLUME_DECIMALS,
        "lot_multiplier": 1,
        "fees": [[0, 0.26], [50000, 0.24]],
        "fees_maker": [[0, 0.16], [50000, 0.14]],
        "fee_volume_currency": "ZUSD",
        "margin_call": 80,
        "margin_stop": 40,
        "ordermin": format(spec.lot_size, "f"),
        "costmin": "0.5",
        "tick_size": format(spec.tick_size, "f"),
        "status": "online",
    }


def _ok(result: object) -> tuple[int, str, str]:
    return 200, dumps({"error": [], "result": result}), JSON


def handle_rest(market: MarketSimulator, path: str, query: Mapping[str, str], now_us: int) -> tuple[int, str, str]:
    """Answer one Kraken REST GET (errors travel in the ``error`` list, with HTTP 200, as on Kraken)."""
    path = path.rstrip("/")
    if path == "/0/public/AssetPairs":
        pairs = dict(_pair_info(spec) for spec in market.symbols)
        wanted = query.get("pair")
        if wanted:
            selected = {}
            for name in wanted.split(","):
                match = next((k for k, v in pairs.items() if name in (k, v["altname"], v["wsname"])), None)
                if match is None:
                    return 200, dumps({"error": ["EQuery:Unknown asset pair"]}), JSON
                selected[match] = pairs[match]
            pairs = selected
        return _ok(pairs)
    if path == "/0/public/Time":
        seconds = now_us // 1_000_000
        return _ok({"unixtime": seconds, "rfc1123": formatdate(seconds, usegmt=True)})
    if path == "/0/public/SystemStatus":
        return _ok({"status": "online", "timestamp": formatdate(now_us // 1_000_000, usegmt=True)})
    return 404, dumps({"error": ["EGeneral:Unknown method"]}), JSON
