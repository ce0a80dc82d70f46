"""OKX v5 public WebSocket (``wss://ws.okx.com:8443/ws/v5/public``).

Subscribe with ``{"op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"},
{"channel":"trades","instId":"BTC-USDT"}]}``. Data frames are
``{"arg": {"channel", "instId"}, "action"?, "data": [...]}``:

- ``books`` (400 levels; also ``books-l2-tbt`` and ``books50-l2-tbt``):
  ``action`` ``snapshot`` or ``update``; each data entry has ``asks``/``bids``
  as ``[price, size, liquidated orders (deprecated "0"), order count]``, ``ts``
  (ms), ``checksum`` (signed CRC32; 0 when OKX no longer computes it) and,
  since 2022, ``seqId``/``prevSeqId`` (the snapshot's ``prevSeqId`` is -1).
- ``books5`` and ``bbo-tbt`` push the whole (5- or 1-level) book every time:
  each push is a snapshot message.
- ``trades`` / ``trades-all``: ``side`` is the taker's side.
- ``tickers``, candles and other market channels are valid frames COBY does
  not store (``ControlEvent`` kind ``"ignored"``).

``{"event": "subscribe"|"unsubscribe", ...}`` are acks; ``{"event": "error"}``
becomes a ``ControlEvent`` of kind ``"error"`` (the feed counts it);
``notice`` (for example an upcoming service upgrade) and ``channel-conn-count``
are ``"status"`` events. The client sends the text ``ping`` at least every
30 s and the exchange answers ``pong``.

Instrument ids are already ``BASE-QUOTE`` for spot; derivatives keep their
id (``UNI-USD-SWAP``, ``BTC-USD-220527``) as the normalized symbol.
"""

from __future__ import annotations

from typing import Any

import orjson

from ...book.orderbook import OrderBook, parse_levels
from ...book.sync import Link, SyncRules
from ...errors import InvalidSymbolError, InvalidValueError, MalformedFrameError, MappingError, UnknownSymbolError
from ...models import BookMessage, ControlEvent, MappedEvent, TradeEvent
from ...symbols import validate_symbol
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
from .checksum import CHECKSUM_LEVELS, okx_checksum

BOOK_CHANNEL = "books"
TRADE_CHANNEL = "trades"
#: Incremental book channels (snapshot, then updates).
_INCREMENTAL_BOOKS = frozenset({"books", "books-l2-tbt", "books50-l2-tbt"})
#: Channels that push the whole (shallow) book every time.
_FULL_BOOKS = frozenset({"books5", "bbo-tbt"})
_TRADE_CHANNELS = frozenset({"trades", "trades-all"})
_IGNORED_CHANNELS = frozenset({
    "tickers", "index-tickers", "mark-price", "funding-rate", "open-interest", "price-limit",
    "opt-summary", "estimated-price", "liquidation-orders", "instruments", "status",
})
#: OKX limits the size of one subscribe frame; stay well below it.
_ARGS_PER_FRAME = 100


class OkxSyncRules(SyncRules):
    """OKX v5: in-band snapshots; the seqId chain when present; the checksum when non-zero."""

    snapshot_from_rest = False

    def first_after_snapshot(self, snapshot_seq: int | None, msg: BookMessage) -> Link:
        return self._link(snapshot_seq, msg)

    def next_delta(self, last_seq: int | None, msg: BookMessage) -> Link:
        return self._link(last_seq, msg)

    @staticmethod
    def _link(last_seq: int | None, msg: BookMessage) -> Link:
        # Frames from before OKX added seqId carry no chain: the checksum decides.
        if last_seq is None or msg.prev_seq is None:
            return Link.APPLY
        # prevSeqId names the message it follows; seqId may equal it (no change)
        # or even be smaller after a maintenance reset. Only the link matters.
        if msg.prev_seq == last_seq:
            return Link.APPLY
        # The message the book ends with, delivered again: already applied. (A
        # copy of an older one cannot be told from a loss: that stays a gap.)
        if msg.seq == last_seq:
            return Link.STALE
        return Link.GAP

    def checksum(self, book: OrderBook) -> int:
        return okx_checksum(book.top("bid", CHECKSUM_LEVELS), book.top("ask", CHECKSUM_LEVELS))


def _optional_int(entry: dict, key: str) -> int | None:
    value = entry.get(key)
    return None if value is None else require_int(value, key)


class OkxMapper(ExchangeMapper):
    exchange = "okx"
    default_endpoints = Endpoints("wss://ws.okx.com:8443/ws/v5/public", "https://www.okx.com")
    # OKX closes connections that are silent for 30 s.
    ping_interval = 25.0

    # -- instruments ---------------------------------------------------------
    def instruments_request(self) -> RestRequest:
        return RestRequest("/api/v5/public/instruments", {"instType": "SPOT"})

    def map_instruments(self, body: str) -> list[Instrument]:
        info = decode_json(body)
        if not isinstance(info, dict) or not isinstance(info.get("data"), list):
            raise MalformedFrameError("instruments body has no 'data' list")
        if str(info.get("code", "0")) != "0":
            raise MappingError(f"instruments error: {info.get('code')} {info.get('msg')}"[:300], code="MAP-005")
        out: list[Instrument] = []
        for entry in info["data"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("instId"), str):
                continue
            try:
                symbol = validate_symbol(entry["instId"])
            except InvalidSymbolError:
                continue
            parts = symbol.split("-")
            base = entry.get("baseCcy") or parts[0]
            quote = entry.get("quoteCcy") or parts[1]
            out.append(Instrument(symbol, entry["instId"], str(base).upper(), str(quote).upper()))
        return out

    def _symbol_by_rule(self, native_symbol: str) -> str:
        # OKX instrument ids are already BASE-QUOTE[-...] in upper case.
        try:
            symbol = validate_symbol(native_symbol)
        except InvalidSymbolError:
            symbol = None
        if symbol is None or symbol != native_symbol:
            raise UnknownSymbolError(f"not an OKX instrument id: {native_symbol!r}"[:200], code="MAP-004")
        return symbol

    def _native_by_rule(self, symbol: str) -> str:
        return symbol

    # -- subscriptions -------------------------------------------------------
    def ws_url(self, base_url: str, native_symbols: list[str]) -> str:
        return base_url

    @staticmethod
    def _frames(op: str, args: list[dict]) -> list[str]:
        return [
            orjson.dumps({"op": op, "args": args[i : i + _ARGS_PER_FRAME]}).decode()
            for i in range(0, len(args), _ARGS_PER_FRAME)
        ]

    def subscribe_messages(self, native_symbols: list[str]) -> list[str]:
        args: list[dict] = []
        for inst in native_symbols:
            args.append({"channel": BOOK_CHANNEL, "instId": inst})
            args.append({"channel": TRADE_CHANNEL, "instId": inst})
        return self._frames("subscribe", args)

    def resubscribe_messages(self, native_symbol: str) -> list[str]:
        arg = [{"channel": BOOK_CHANNEL, "instId": native_symbol}]
        return self._frames("unsubscribe", arg) + self._frames("subscribe", arg)

    def ping_message(self) -> str:
        return "ping"

    def sync_rules(self) -> OkxSyncRules:
        return OkxSyncRules()

    # -- mapping -------------------------------------------------------------
    def map_message(self, raw: str | bytes, local_ts: int) -> list[MappedEvent]:
        try:
            if raw == "pong" or raw == b"pong":
                return [ControlEvent(self.exchange, "pong", local_ts)]
            msg = decode_json(raw)
            if not isinstance(msg, dict):
                raise MalformedFrameError(f"expected a JSON object, got {type(msg).__name__}")
            if "event" in msg:
                return [self._map_event(msg, local_ts)]
            return self._map_data(msg, local_ts)
        except Exception as exc:  # a mapper never raises: quarantine instead
            return [mapping_failure(self.exchange, raw, local_ts, exc)]

    def _map_event(self, msg: dict, local_ts: int) -> ControlEvent:
        event = msg["event"]
        arg = msg.get("arg") if isinstance(msg.get("arg"), dict) else {}
        if event in ("subscribe", "unsubscribe"):
            return ControlEvent(self.exchange, "ack", local_ts, f"{event} {arg.get('channel')} {arg.get('instId')}"[:200])
        if event == "error":
            return ControlEvent(self.exchange, "error", local_ts, f"code {msg.get('code')}: {msg.get('msg')}"[:500])
        if event in ("notice", "channel-conn-count", "channel-conn-count-error"):
            return ControlEvent(self.exchange, "status", local_ts, f"{event} {msg.get('code', '')} {msg.get('msg', '')}"[:500])
        raise MappingError(f"unknown OKX event {event!r}"[:200], code="MAP-001")

    def _map_data(self, msg: dict, local_ts: int) -> list[MappedEvent]:
        arg = msg.get("arg")
        data = msg.get("data")
        if not isinstance(arg, dict) or not isinstance(data, list):
            raise MalformedFrameError("data frame needs 'arg' (object) and 'data' (list)")
        channel = require_str(arg.get("channel"), "arg.channel")
        if channel in _INCREMENTAL_BOOKS:
            action = msg.get("action")
            if action not in ("snapshot", "update"):
                raise MalformedFrameError(f"book frame action must be snapshot or update, got {action!r}"[:200])
            inst = require_str(arg.get("instId"), "arg.instId")
            try:
                return [self._book(inst, entry, action == "snapshot", True, local_ts) for entry in data]
            except Exception as exc:
                raise BookFrameRejected(inst, exc) from exc
        if channel in _FULL_BOOKS:
            inst = require_str(arg.get("instId"), "arg.instId")
            try:
                return [self._book(inst, entry, True, False, local_ts) for entry in data]
            except Exception as exc:
                raise BookFrameRejected(inst, exc) from exc
        if channel in _TRADE_CHANNELS:
            return [self._trade(entry, local_ts) for entry in data]
        if channel in _IGNORED_CHANNELS or channel.startswith(("candle", "mark-price-candle", "index-candle")):
            return [ControlEvent(self.exchange, "ignored", local_ts, f"{channel} {arg.get('instId', '')}"[:200])]
        raise MappingError(f"unknown OKX channel {channel!r}"[:200], code="MAP-001")

    def _book(self, inst: str, entry: Any, snapshot: bool, chained: bool, local_ts: int) -> BookMessage:
        if not isinstance(entry, dict):
            raise MalformedFrameError("book data entry must be an object")
        symbol = self.normalize_symbol(inst)
        checksum = _optional_int(entry, "checksum")
        seq = _optional_int(entry, "seqId")
        prev = _optional_int(entry, "prevSeqId") if chained else None
        return BookMessage(
            self.exchange,
            symbol,
            inst,
            parse_levels(entry["bids"], "bids"),
            parse_levels(entry["asks"], "asks"),
            local_ts,
            millis_to_us(entry["ts"], "ts") if "ts" in entry else None,
            snapshot,
            seq,
            prev,
            None,
            checksum,
        )

    def _trade(self, entry: Any, local_ts: int) -> TradeEvent:
        if not isinstance(entry, dict):
            raise MalformedFrameError("trade data entry must be an object")
        inst = require_str(entry.get("instId"), "instId")
        side = entry.get("side")
        if side not in ("buy", "sell"):
            raise InvalidValueError(f"trade side must be buy or sell, got {side!r}"[:200])
        return TradeEvent(
            self.exchange,
            self.normalize_symbol(inst),
            inst,
            require_str(entry.get("tradeId"), "tradeId"),
            require_positive_decimal(entry.get("px"), "px"),
            require_positive_decimal(entry.get("sz"), "sz"),
            side,
            local_ts,
            millis_to_us(entry["ts"], "ts"),
        )
