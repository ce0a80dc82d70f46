"""Binance spot: combined-stream WebSocket frames and REST depth snapshots.

Streams per symbol: ``<symbol>@depth@100ms`` (diff depth) and
``<symbol>@trade``, all in the connection URL (``/stream?streams=a/b/c``).
Frames arrive wrapped as ``{"stream": ..., "data": {...}}``; the raw form
(``{"e": ...}`` alone) is accepted too.

- ``depthUpdate``: a delta with ``seq = u``, ``prev_seq = U - 1``,
  ``first_seq = U``; ``exchange_ts`` is the event time ``E``.
- ``trade`` / ``aggTrade``: ``m`` true means the buyer was the maker, so the
  taker sold. ``trade_id`` is ``t`` for ``trade`` and the aggregate id ``a``
  for ``aggTrade`` (subscribe to one of the two, not both); ``exchange_ts`` is
  the trade time ``T``.
- ``bookTicker``, ``kline``, tickers and partial-depth frames are valid frames
  of channels COBY does not store: a ``ControlEvent`` of kind ``"ignored"``.
- ``{"result": null, "id": n}`` is a subscription ack; ``{"code", "msg"}`` and
  ``{"error": {...}}`` are exchange errors (``ControlEvent`` kind ``"error"``,
  which the feed counts and records as a feed event).
- The REST snapshot ``/api/v3/depth?symbol=X&limit=1000`` becomes a snapshot
  message with ``seq = lastUpdateId``.

Symbols come concatenated (``NKNUSDT``); ``/api/v3/exchangeInfo`` gives the
base and quote assets. Without it the longest known quote-asset suffix splits
the name.
"""

from __future__ import annotations

from typing import Any

from ...book.orderbook import parse_levels
from ...book.sync import Link, SyncRules
from ...errors import (
    ExchangeErrorFrame,
    InvalidValueError,
    MalformedFrameError,
    MappingError,
    UnknownSymbolError,
)
from ...models import BookMessage, ControlEvent, MappedEvent, TradeEvent
from ...symbols import join_symbol, split_by_quote
from ..base import (
    BookFrameRejected,
    Endpoints,
    ExchangeMapper,
    Instrument,
    RestRequest,
    decode_json,
    mapping_failure,
    millis_to_us,
    require_int,
    require_positive_decimal,
    require_str,
)

SNAPSHOT_LIMIT = 1000
DEPTH_STREAM = "depth@100ms"
TRADE_STREAM = "trade"

#: Event types (``e``) of channels COBY does not store.
_IGNORED_EVENTS = frozenset({"kline", "24hrTicker", "24hrMiniTicker", "1hTicker", "4hTicker", "1dTicker", "avgPrice"})
#: Stream-name markers of channels without an ``e`` field that COBY does not store.
_IGNORED_STREAMS = ("@bookTicker", "@depth5", "@depth10", "@depth20", "!bookTicker")


class BinanceSyncRules(SyncRules):
    """Binance spot diff-depth alignment (see :mod:`streamer.book.sync`)."""

    snapshot_from_rest = True

    def first_after_snapshot(self, snapshot_seq: int | None, msg: BookMessage) -> Link:
        if snapshot_seq is None or msg.seq is None or msg.first_seq is None:
            return Link.GAP
        if msg.seq <= snapshot_seq:
            return Link.STALE
        if msg.first_seq <= snapshot_seq + 1:
            return Link.APPLY
        return Link.GAP

    def next_delta(self, last_seq: int | None, msg: BookMessage) -> Link:
        if last_seq is None or msg.seq is None or msg.prev_seq is None:
            return Link.GAP
        if msg.prev_seq == last_seq:
            return Link.APPLY
        if msg.seq <= last_seq:
            return Link.STALE
        return Link.GAP


class BinanceSpotMapper(ExchangeMapper):
    exchange = "binance"
    default_endpoints = Endpoints("wss://stream.binance.com:9443", "https://api.binance.com")
    # Binance pings at the WebSocket level; the client library answers.
    ping_interval = None

    # -- instruments ---------------------------------------------------------
    def instruments_request(self) -> RestRequest:
        return RestRequest("/api/v3/exchangeInfo")

    def map_instruments(self, body: str) -> list[Instrument]:
        """``exchangeInfo`` -> instruments. Entries whose asset codes cannot
        form a normalized symbol are skipped (they could not be subscribed)."""
        info = decode_json(body)
        if not isinstance(info, dict) or not isinstance(info.get("symbols"), list):
            raise MalformedFrameError("exchangeInfo body has no 'symbols' list")
        out: list[Instrument] = []
        for entry in info["symbols"]:
            try:
                native = require_str(entry["symbol"], "symbol")
                base, quote = require_str(entry["baseAsset"], "baseAsset"), require_str(entry["quoteAsset"], "quoteAsset")
                symbol = join_symbol(base, quote)
            except (MappingError, KeyError, TypeError, ValueError):
                continue
            out.append(Instrument(symbol, native, base.upper(), quote.upper()))
        return out

    def _symbol_by_rule(self, native_symbol: str) -> str:
        parts = split_by_quote(native_symbol) if isinstance(native_symbol, str) else None
        if parts is None or native_symbol != native_symbol.upper():
            raise UnknownSymbolError(f"unknown Binance symbol {native_symbol!r}", code="MAP-004")
        return join_symbol(*parts)

    def _native_by_rule(self, symbol: str) -> str:
        return "".join(symbol.split("-")[:2])

    # -- subscriptions -------------------------------------------------------
    def ws_url(self, base_url: str, native_symbols: list[str]) -> str:
        streams: list[str] = []
        for native in native_symbols:
            name = native.lower()
            streams.append(f"{name}@{DEPTH_STREAM}")
            streams.append(f"{name}@{TRADE_STREAM}")
        return f"{base_url.rstrip('/')}/stream?streams={'/'.join(streams)}"

    def subscribe_messages(self, native_symbols: list[str]) -> list[str]:
        return []  # the streams are in the URL

    def snapshot_request(self, native_symbol: str) -> RestRequest:
        return RestRequest("/api/v3/depth", {"symbol": native_symbol, "limit": str(SNAPSHOT_LIMIT)})

    def sync_rules(self) -> BinanceSyncRules:
        return BinanceSyncRules()

    # -- mapping -------------------------------------------------------------
    def map_message(self, raw: str | bytes, local_ts: int) -> list[MappedEvent]:
        try:
            return self._map(decode_json(raw), local_ts)
        except Exception as exc:  # a mapper never raises: quarantine instead
            return [mapping_failure(self.exchange, raw, local_ts, exc)]

    def map_snapshot(self, native_symbol: str, body: str, local_ts: int) -> list[MappedEvent]:
        try:
            return [self._snapshot(native_symbol, decode_json(body), local_ts)]
        except Exception as exc:
            return [mapping_failure(self.exchange, body, local_ts, exc)]

    def _map(self, msg: Any, local_ts: int) -> list[MappedEvent]:
        if not isinstance(msg, dict):
            raise MalformedFrameError(f"expected a JSON object, got {type(msg).__name__}")
        stream = ""
        data = msg
        if "stream" in msg and "data" in msg:
            stream = require_str(msg["stream"], "stream")
            data = msg["data"]
            if not isinstance(data, dict):
                raise MalformedFrameError("combined-stream 'data' must be an object")
        event = data.get("e")
        if event == "depthUpdate":
            return [self._depth_update(data, local_ts)]
        if event == "trade":
            return [self._trade(data, "t", local_ts)]
        if event == "aggTrade":
            return [self._trade(data, "a", local_ts)]
        if event in _IGNORED_EVENTS or (stream and any(marker in stream for marker in _IGNORED_STREAMS)):
            return [ControlEvent(self.exchange, "ignored", local_ts, stream or str(event))]
        if event is None and {"u", "s", "b", "B", "a", "A"} <= data.keys():  # raw bookTicker
            return [ControlEvent(self.exchange, "ignored", local_ts, f"bookTicker {data['s']}"[:100])]
        if "result" in data and "id" in data:
            return [ControlEvent(self.exchange, "ack", local_ts, f"id {data['id']}: result {data['result']!r}"[:300])]
        error = data.get("error") if isinstance(data.get("error"), dict) else data
        if "code" in error and "msg" in error:
            return [ControlEvent(self.exchange, "error", local_ts, f"code {error['code']}: {error['msg']}"[:500])]
        raise MappingError(f"unknown Binance message (event {event!r}, stream {stream!r})", code="MAP-001")

    def _depth_update(self, data: dict, local_ts: int) -> BookMessage:
        native = require_str(data["s"], "s")
        symbol = self.normalize_symbol(native)
        try:
            first = require_int(data["U"], "U")
            last = require_int(data["u"], "u")
            if first > last:
                raise InvalidValueError(f"depthUpdate has U {first} > u {last}")
            return BookMessage(
                self.exchange,
                symbol,
                native,
                parse_levels(data["b"], "bids"),
                parse_levels(data["a"], "asks"),
                local_ts,
                millis_to_us(data["E"], "E"),
                False,
                last,
                first - 1,
                first,
            )
        except Exception as exc:
            raise BookFrameRejected(native, exc) from exc

    def _trade(self, data: dict, id_field: str, local_ts: int) -> TradeEvent:
        native = require_str(data["s"], "s")
        symbol = self.normalize_symbol(native)
        buyer_is_maker = data["m"]
        if type(buyer_is_maker) is not bool:
            raise MalformedFrameError(f"trade 'm' must be a boolean, got {buyer_is_maker!r}")
        return TradeEvent(
            self.exchange,
            symbol,
            native,
            str(require_int(data[id_field], id_field)),
            require_positive_decimal(data["p"], "price"),
            require_positive_decimal(data["q"], "quantity"),
            "sell" if buyer_is_maker else "buy",
            local_ts,
            millis_to_us(data["T"], "T"),
        )

    def _snapshot(self, native_symbol: str, body: Any, local_ts: int) -> BookMessage:
        if not isinstance(body, dict):
            raise MalformedFrameError(f"depth snapshot must be a JSON object, got {type(body).__name__}")
        if "code" in body and "msg" in body:
            raise ExchangeErrorFrame(f"depth snapshot refused: code {body['code']}: {body['msg']}"[:500], code="MAP-005")
        symbol = self.normalize_symbol(native_symbol)
        return BookMessage(
            self.exchange,
            symbol,
            native_symbol,
            parse_levels(body["bids"], "bids"),
            parse_levels(body["asks"], "asks"),
            local_ts,
            None,
            True,
            require_int(body["lastUpdateId"], "lastUpdateId"),
        )

