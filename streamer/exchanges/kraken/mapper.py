"""Kraken spot WebSocket v1 (``wss://ws.kraken.com``).

Data frames are JSON arrays ``[channelID, payload..., channelName, pair]``:

- ``book-N``: the first frame of a subscription holds ``{"as": [...], "bs": [...]}``
  (the snapshot); later frames hold ``{"a": [...]}`` and/or ``{"b": [...]}``,
  sometimes as two dicts in one frame, with the CRC32 ``"c"`` (a decimal
  string) in the last one. Levels are ``[price, volume, timestamp]``; a fourth
  element ``"r"`` marks a republished level (applied like any other update).
  ``exchange_ts`` is the latest level timestamp of the frame.
- ``trade``: ``[[price, volume, time, side, orderType, misc], ...]``; ``side``
  ``"b"``/``"s"`` is the taker's side. v1 trades carry no id, so ``trade_id``
  is ``"<time>-<index in the frame>"`` (unique in practice: Kraken sends the
  trades of one match in one frame).
- ``ticker``, ``spread`` and ``ohlc-*`` are valid channels COBY does not store
  (``ControlEvent`` kind ``"ignored"``).

Events are JSON objects: ``heartbeat``, ``systemStatus``, ``pong`` and
successful ``subscriptionStatus`` become ``ControlEvent``s; a
``subscriptionStatus`` with ``status: error`` and ``event: error`` become a
``ControlEvent`` of kind ``"error"`` (counted by the feed).

Book depth: the depth N of each pair's book is read from the ``book-N``
channel name of every book frame and recorded in a table shared with the
:class:`KrakenSyncRules` this mapper hands out, so the book is truncated to
the depth the exchange actually serves (a replayed ``book-1000`` session is
truncated at 1000 even when the mapper was configured for 100). Before the
first frame of a pair, the configured ``book_depth`` applies.

Pairs are ``BASE/QUOTE`` with Kraken's asset codes; ``XBT`` is ``BTC`` and
``XDG`` is ``DOGE`` in normalized symbols.
"""

from __future__ import annotations

import re
from operator import itemgetter
from typing import Any

import orjson

from ...book.orderbook import OrderBook, as_lines, decimal_columns, is_decimal
from ...book.sync import SyncRules
from ...errors import ConfigError, InvalidValueError, MalformedFrameError, MappingError, UnknownSymbolError
from ...models import BookMessage, ControlEvent, MappedEvent, RawLevel, TradeEvent
from ...symbols import canonical_asset, join_symbol
from ..base import (
    MAX_MILLIS,
    BookFrameRejected,
    Endpoints,
    ExchangeMapper,
    Instrument,
    RestRequest,
    decode_json,
    mapping_failure,
    require_positive_decimal,
    require_str,
)
from .checksum import book_checksum

#: Depths Kraken v1 accepts for the book subscription.
VALID_DEPTHS = (10, 25, 100, 500, 1000)
DEFAULT_DEPTH = 100
#: Kraken's own codes for assets that have a common code elsewhere.
KRAKEN_ALIASES = {"XBT": "BTC", "XDG": "DOGE"}
_TO_KRAKEN = {common: native for native, common in KRAKEN_ALIASES.items()}
_IGNORED_CHANNELS = ("ticker", "spread", "ohlc")
_TAKER_SIDES = {"b": "buy", "s": "sell"}


class KrakenSyncRules(SyncRules):
    """Kraken v1: in-band snapshots, no sequence numbers, CRC32 over the top 10
    levels, truncation to the subscribed depth after every message."""

    snapshot_from_rest = False

    def __init__(self, max_depth: int, depths: dict[str, int] | None = None) -> None:
        self.max_depth = max_depth
        # Shared with the mapper, which records the depth of each pair's channel.
        self._depths = depths if depths is not None else {}

    def depth_limit(self, native_symbol: str) -> int | None:
        return self._depths.get(native_symbol, self.max_depth)

    def checksum(self, book: OrderBook) -> int:
        return book_checksum(book)


def _timestamp_us(value: Any) -> int:
    """Kraken's ``"1618678133.365913"`` (seconds) -> integer microseconds, exactly."""
    if type(value) is not str:
        raise MalformedFrameError(f"timestamp must be a string, got {value!r}"[:200])
    seconds, _, fraction = value.partition(".")
    if (
        not (seconds.isascii() and seconds.isdigit())
        or (fraction and not (fraction.isascii() and fraction.isdigit()))
        or len(seconds) > 12
        or int(seconds) > MAX_MILLIS // 1000
    ):
        raise MalformedFrameError(f"timestamp is not seconds since the epoch: {value!r}"[:200])
    return int(seconds) * 1_000_000 + int((fraction + "000000")[:6])


class KrakenSpotMapper(ExchangeMapper):
    exchange = "kraken"
    default_endpoints = Endpoints("wss://ws.kraken.com", "https://api.kraken.com")
    # Kraken sends heartbeats when a connection is idle; no client ping is needed.
    ping_interval = None

    def __init__(self, book_depth: int = DEFAULT_DEPTH) -> None:
        if book_depth not in VALID_DEPTHS:
            raise ConfigError(f"Kraken book depth must be one of {VALID_DEPTHS}, got {book_depth!r}")
        super().__init__()
        self.book_depth = book_depth
        self._depths: dict[str, int] = {}  # pair -> depth of its book channel, as served
        self._rules = KrakenSyncRules(book_depth, self._depths)

    # -- instruments ---------------------------------------------------------
    def instruments_request(self) -> RestRequest:
        return RestRequest("/0/public/AssetPairs")

    def map_instruments(self, body: str) -> list[Instrument]:
        """``AssetPairs`` -> instruments keyed by their WebSocket name (``wsname``).
        Pairs without a ``wsname`` are not on the WebSocket API and are skipped."""
        info = decode_json(body)
        if not isinstance(info, dict) or not isinstance(info.get("result"), dict):
            raise MalformedFrameError("AssetPairs body has no 'result' object")
        if info.get("error"):
            raise MappingError(f"AssetPairs error: {info['error']}"[:300], code="MAP-005")
        out: list[Instrument] = []
        for entry in info["result"].values():
            wsname = entry.get("wsname") if isinstance(entry, dict) else None
            if not isinstance(wsname, str) or wsname.count("/") != 1:
                continue
            base, quote = wsname.split("/")
            try:
                symbol = join_symbol(base, quote)
            except Exception:
                continue
            out.append(Instrument(symbol, wsname, canonical_asset(base), canonical_asset(quote)))
        return out

    def _symbol_by_rule(self, native_symbol: str) -> str:
        if not isinstance(native_symbol, str) or native_symbol.count("/") != 1:
            raise UnknownSymbolError(f"not a Kraken pair: {native_symbol!r}"[:200], code="MAP-004")
        base, quote = native_symbol.split("/")
        try:
            return join_symbol(base, quote)
        except Exception:
            raise UnknownSymbolError(f"not a Kraken pair: {native_symbol!r}"[:200], code="MAP-004") from None

    def _native_by_rule(self, symbol: str) -> str:
        base, quote = symbol.split("-")[:2]
        return f"{_TO_KRAKEN.get(base, base)}/{_TO_KRAKEN.get(quote, quote)}"

    # -- subscriptions -------------------------------------------------------
    def ws_url(self, base_url: str, native_symbols: list[str]) -> str:
        return base_url

    def _subscription(self, event: str, pairs: list[str], subscription: dict) -> str:
        return orjson.dumps({"event": event, "pair": pairs, "subscription": subscription}).decode()

    def subscribe_messages(self, native_symbols: list[str]) -> list[str]:
        pairs = list(native_symbols)
        return [
            self._subscription("subscribe", pairs, {"name": "book", "depth": self.book_depth}),
            self._subscription("subscribe", pairs, {"name": "trade"}),
        ]

    def resubscribe_messages(self, native_symbol: str) -> list[str]:
        depth = self._depths.get(native_symbol, self.book_depth)
        book = {"name": "book", "depth": depth}
        return [
            self._subscription("unsubscribe", [native_symbol], book),
            self._subscription("subscribe", [native_symbol], book),
        ]

    def ping_message(self) -> str:
        return '{"event":"ping"}'

    def sync_rules(self) -> KrakenSyncRules:
        return self._rules

    # -- mapping -------------------------------------------------------------
    def map_message(self, raw: str | bytes, local_ts: int) -> list[MappedEvent]:
        try:
            msg = decode_json(raw)
            if isinstance(msg, list):
                return self._map_channel(msg, local_ts)
            if isinstance(msg, dict):
                return [self._map_event(msg, local_ts)]
            raise MalformedFrameError(f"expected a JSON array or object, got {type(msg).__name__}")
        except Exception as exc:  # a mapper never raises: quarantine instead
            return [mapping_failure(self.exchange, raw, local_ts, exc)]

    def _map_event(self, msg: dict, local_ts: int) -> ControlEvent:
        event = msg.get("event")
        if event == "heartbeat":
            return ControlEvent(self.exchange, "heartbeat", local_ts)
        if event == "pong":
            return ControlEvent(self.exchange, "pong", local_ts)
        if event == "systemStatus":
            return ControlEvent(self.exchange, "status", local_ts, f"system {msg.get('status')}"[:200])
        if event == "subscriptionStatus":
            pair = msg.get("pair")
            symbol = self._symbol_or_none(pair)
            if msg.get("status") == "error":
                detail = f"subscription error for {pair}: {msg.get('errorMessage')}"
                return ControlEvent(self.exchange, "error", local_ts, detail[:500], symbol)
            detail = f"{msg.get('status')} {msg.get('channelName')} {pair}"
            return ControlEvent(self.exchange, "ack", local_ts, detail[:200], symbol)
        if event == "error":
            return ControlEvent(self.exchange, "error", local_ts, str(msg.get("errorMessage", msg))[:500])
        raise MappingError(f"unknown Kraken event {event!r}"[:200], code="MAP-001")

    def _symbol_or_none(self, pair: Any) -> str | None:
        try:
            return self.normalize_symbol(pair)
        except MappingError:
            return None

    def _map_channel(self, msg: list, local_ts: int) -> list[MappedEvent]:
        if len(msg) < 4:
            raise MalformedFrameError(f"channel frame needs [id, payload, name, pair], got {len(msg)} elements")
        channel, pair = msg[-2], msg[-1]
        if type(channel) is not str or type(pair) is not str:
            raise MalformedFrameError("channel name and pair must be strings")
        if channel.startswith("book-"):
            try:
                return [self._book(msg, channel, pair, local_ts)]
            except Exception as exc:
                raise BookFrameRejected(pair, exc) from exc
        if channel == "trade":
            return self._trades(msg, pair, local_ts)
        if channel.startswith(_IGNORED_CHANNELS):
            return [ControlEvent(self.exchange, "ignored", local_ts, f"{channel} {pair}")]
        raise MappingError(f"unknown Kraken channel {channel!r}"[:200], code="MAP-001")

    def _book(self, msg: list, channel: str, pair: str, local_ts: int) -> BookMessage:
        depth_text = channel[5:]
        if not (depth_text.isascii() and depth_text.isdigit()) or int(depth_text) <= 0:
            raise MalformedFrameError(f"book channel without a depth: {channel!r}")
        symbol = self.normalize_symbol(pair)
        bids: list[RawLevel] = []
        asks: list[RawLevel] = []
        snapshot = False
        checksum: int | None = None
        latest = ""  # the latest level timestamp, compared as text of equal shape
        latest_value = -1.0
        for payload in msg[1:-2]:
            if type(payload) is not dict:
                raise MalformedFrameError("book payload must be an object")
            known = False
            # One pass over the payload's own keys (one or two per frame) rather
            # than a lookup of every possible key.
            for key, value in payload.items():
                side = _BOOK_KEYS.get(key)
                if side is not None:
                    known = True
                    is_ask, is_snapshot = side
                    if is_snapshot:
                        snapshot = True
                    stamp, stamp_value = _parse_levels(value, key, asks if is_ask else bids)
                    if stamp_value > latest_value:
                        latest, latest_value = stamp, stamp_value
                elif key == "c":
                    known = True
                    if type(value) is not str or not (value.isascii() and value.isdigit()):
                        raise MalformedFrameError(f"checksum 'c' must be a decimal string, got {value!r}"[:200])
                    checksum = int(value)
            if not known:
                raise MalformedFrameError(f"book payload has none of as/bs/a/b/c: {sorted(payload)!r}"[:200])
        # Recorded only once the frame is known to be good, so a bad frame cannot change the depth.
        self._depths[pair] = int(depth_text)
        return BookMessage(
            self.exchange, symbol, pair, bids, asks, local_ts,
            _timestamp_us(latest) if latest else None, snapshot, None, None, None, checksum,
        )

    def _trades(self, msg: list, pair: str, local_ts: int) -> list[MappedEvent]:
        symbol = self.normalize_symbol(pair)
        trades = msg[1]
        if not isinstance(trades, list) or len(msg) != 4:
            raise MalformedFrameError("trade frame must be [id, [trades], 'trade', pair]")
        out: list[MappedEvent] = []
        for index, trade in enumerate(trades):
            if not isinstance(trade, list) or len(trade) < 4:
                raise MalformedFrameError(f"trade must be [price, volume, time, side, ...], got {trade!r}"[:200])
            side = _TAKER_SIDES.get(trade[3])
            if side is None:
                raise InvalidValueError(f"trade side must be 'b' or 's', got {trade[3]!r}"[:200])
            time_text = require_str(trade[2], "trade time")
            out.append(TradeEvent(
                self.exchange, symbol, pair, f"{time_text}-{index}",
                require_positive_decimal(trade[0], "price"),
                require_positive_decimal(trade[1], "volume"),
                side, local_ts, _timestamp_us(time_text),
            ))
        return out


#: Book payload keys: (asks?, snapshot?). "as"/"bs" open a snapshot, "a"/"b" are updates.
_BOOK_KEYS = {"as": (True, True), "bs": (False, True), "a": (True, False), "b": (False, False)}


#: Level lists at least this long (snapshots) are checked a column at a time.
_COLUMNS_FROM = 12
#: Kraken's level timestamps as it writes them (seconds, six decimals), one per
#: line. Of one shape, the latest is the greatest text: no float() per level.
_STAMP_LINES = re.compile(r"[0-9]{10}\.[0-9]{6}(?:\n[0-9]{10}\.[0-9]{6})*")
_price, _size, _stamp = itemgetter(0), itemgetter(1), itemgetter(2)


def _parse_levels(levels: Any, key: str, target: list[RawLevel]) -> tuple[str, float]:
    """Validate Kraken levels into ``target``; returns the latest timestamp (text, value)."""
    if not isinstance(levels, list):
        raise MalformedFrameError(f"{key}: expected a list of levels")
    if len(levels) >= _COLUMNS_FROM:
        columns = _level_columns(levels)
        if columns is not None:
            target.extend(columns[0])
            return columns[1], float(columns[1])
    latest, latest_value = "", -1.0
    for level in levels:
        if not isinstance(level, list) or not 3 <= len(level) <= 4:
            raise MalformedFrameError(f"{key}: level must be [price, volume, timestamp(, 'r')], got {level!r}"[:300])
        price, size, stamp = level[0], level[1], level[2]
        if type(price) is not str or type(size) is not str or type(stamp) is not str:
            raise MalformedFrameError(f"{key}: level fields must be strings, got {level!r}"[:300])
        if is_decimal(price) is None or is_decimal(size) is None:
            raise InvalidValueError(f"{key}: price and volume must be non-negative decimals, got {level!r}"[:300])
        if len(level) == 4 and level[3] != "r":
            raise MalformedFrameError(f"{key}: unknown level flag {level[3]!r}"[:300])
        value = float(stamp) if is_decimal(stamp) else -2.0
        if value == -2.0:
            raise MalformedFrameError(f"{key}: bad level timestamp {stamp!r}"[:300])
        if value > latest_value:
            latest, latest_value = stamp, value
        target.append((price, size))
    return latest, latest_value


def _level_columns(levels: list) -> tuple[list[RawLevel], str] | None:
    """``_parse_levels`` for a long list (a snapshot of hundreds of levels), a column at a time.

    Accepts exactly what the level-by-level loop accepts, restricted to
    timestamps of Kraken's own shape. None when any level falls outside that
    (a wrong structure, a bad value, another timestamp shape): the loop then
    checks level by level and names the offending level, or accepts it.
    """
    if set(map(type, levels)) != {list}:
        return None
    lengths = set(map(len, levels))
    if not lengths <= {3, 4}:
        return None
    if 4 in lengths and {level[3] for level in levels if len(level) == 4} != {"r"}:
        return None
    prices, sizes, stamps = list(map(_price, levels)), list(map(_size, levels)), list(map(_stamp, levels))
    if not decimal_columns(prices, sizes) or set(map(type, stamps)) != {str}:
        return None
    text = as_lines(stamps)
    if text is None or _STAMP_LINES.fullmatch(text) is None:
        return None
    return list(zip(prices, sizes)), max(stamps)
