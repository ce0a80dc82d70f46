"""Kraken spot WebSocket v1 mapper, checksum and depth handling."""

from __future__ import annotations

import json
import zlib

import pytest

from streamer.book.sync import BookSync
from streamer.errors import ConfigError
from streamer.book.orderbook import OrderBook
from streamer.errors import InvalidValueError
from streamer.exchanges.kraken.checksum import book_checksum, kraken_checksum
from streamer.exchanges.kraken.mapper import KrakenSpotMapper
from streamer.exchanges.registry import get_mapper
from streamer.models import BookMessage, ControlEvent, FeedEventKind, Quarantine, TradeEvent

TS = 1_700_000_000_000_000


def one(mapper, frame):
    events = mapper.map_message(frame if isinstance(frame, (str, bytes)) else json.dumps(frame), TS)
    assert len(events) == 1, events
    return events[0]


def test_checksum_follows_the_documented_algorithm():
    asks = [("0.05005", "0.00000500"), ("0.05010", "0.00000500")]
    bids = [("0.05000", "0.00000500"), ("0.04995", "0.00000500")]
    # Written out by hand: drop '.', strip leading zeros, asks then bids.
    text = "5005" + "500" + "5010" + "500" + "5000" + "500" + "4995" + "500"
    assert kraken_checksum(asks, bids) == zlib.crc32(text.encode())
    # Only the top 10 of each side count.
    many = [(f"{i}.0", "1.0") for i in range(1, 15)]
    assert kraken_checksum(many, []) == kraken_checksum(many[:10], [])


def test_book_checksum_reuses_only_untouched_sides():
    """The live book's checksum (which keeps each side's part between frames)
    equals the checksum recomputed from scratch after every kind of change."""
    import random

    rng = random.Random(7)
    book = OrderBook()

    def expect_fresh() -> None:
        assert book_checksum(book) == kraken_checksum(book.top("ask", 10), book.top("bid", 10))

    book.apply_levels("bid", [(f"{100 - i * 0.5:.1f}", "1.00") for i in range(30)])
    book.apply_levels("ask", [(f"{101 + i * 0.5:.1f}", "2.00") for i in range(30)])
    expect_fresh()
    for step in range(600):
        side = rng.choice(["bid", "ask"])
        base = 100.0 if side == "bid" else 101.0
        price = f"{base + (rng.randrange(-12, 12) if side == 'ask' else -rng.randrange(-3, 20)) * 0.5:.1f}"
        action = rng.random()
        if action < 0.7:
            book.apply_levels(side, [(price, rng.choice(["0", "0.5", "3.25", "10"]))])
        elif action < 0.8:
            book.apply(side, price, "7.5")
        elif action < 0.85:
            book.apply_levels(side, [])  # a frame without this side
        elif action < 0.9:
            book.truncate(rng.randrange(5, 40))
        elif action < 0.93:
            with pytest.raises(InvalidValueError):  # half applied: the side counts as changed
                book.apply_levels(side, [(price, "4"), ("nan", "1")])
        elif action < 0.95:
            book.clear()
            book.apply_levels("bid", [("99.0", "1")])
        expect_fresh()
    restored = OrderBook.__new__(OrderBook)
    restored.__setstate__(book.__getstate__())  # a book from a journal STATE record
    assert book_checksum(restored) == book_checksum(book)


def test_snapshot_and_update_frames():
    m = KrakenSpotMapper()
    snap = [1664, {"as": [["13.2539", "35.5", "1618678123.481570"]],
                   "bs": [["13.2329", "185.1", "1618678132.136369"], ["13.2000", "1.0", "1618678100.000001"]]},
            "book-25", "WAVES/EUR"]
    ev = one(m, snap)
    assert isinstance(ev, BookMessage) and ev.is_snapshot and ev.checksum is None
    assert (ev.symbol, ev.native_symbol) == ("WAVES-EUR", "WAVES/EUR")
    assert ev.asks == [("13.2539", "35.5")] and ev.bids[1] == ("13.2000", "1.0")
    assert ev.exchange_ts == 1618678132136369  # latest level time, exact to the microsecond
    assert m.sync_rules().depth_limit("WAVES/EUR") == 25

    # Two dicts in one frame, a republished level, checksum in the last dict.
    upd = [1664, {"a": [["13.2600", "1.0", "1618678133.000001", "r"]]},
           {"b": [["13.2329", "0.00000000", "1618678133.383209"]], "c": "176333288"}, "book-25", "WAVES/EUR"]
    ev = one(m, upd)
    assert not ev.is_snapshot and ev.checksum == 176333288
    assert ev.asks == [("13.2600", "1.0")] and ev.bids == [("13.2329", "0.00000000")]
    assert ev.exchange_ts == 1618678133383209


def test_book_sync_with_kraken_rules_verifies_checksums_and_truncates():
    m = KrakenSpotMapper(book_depth=10)
    rules = m.sync_rules()
    sync = BookSync("kraken", "XBT-USD", "XBT/USD", rules)
    asks = [[f"{100 + i}.0", "1.0", "1.0"] for i in range(12)]
    bids = [[f"{99 - i}.0", "2.0", "1.0"] for i in range(12)]
    snapshot = one(m, [1, {"as": asks, "bs": bids}, "book-10", "XBT/USD"])
    assert snapshot.symbol == "BTC-USD"
    sync.on_message(snapshot)
    assert sync.book.depth("ask") == 10 and sync.book.depth("bid") == 10

    expected = zlib.crc32(("".join(f"{100 + i}010" for i in range(1, 10)) + "110010"
                           + "".join(f"{99 - i}020" for i in range(10))).encode())
    delta = one(m, [1, {"a": [["100.0", "0", "2.0"], ["110.0", "1.0", "2.0", "r"]], "c": str(expected)},
                    "book-10", "XBT/USD"])
    out = sync.on_message(delta)
    assert sync.checksum_ok == 1 and out.applied and not out.needs_resync
    bad = one(m, [1, {"b": [["99.0", "3.0", "3.0"]], "c": "12345"}, "book-10", "XBT/USD"])
    out = sync.on_message(bad)
    assert [e.kind for e in out.events] == [FeedEventKind.CHECKSUM_FAILED, FeedEventKind.RESYNC]


def test_trades_use_the_taker_side_and_a_stable_id():
    m = KrakenSpotMapper()
    frame = [993, [["354.04", "0.28", "1618678150.826417", "s", "m", ""],
                   ["353.81", "1.71", "1618678150.827816", "b", "l", ""]], "trade", "XMR/USD"]
    events = m.map_message(json.dumps(frame), TS)
    assert all(isinstance(e, TradeEvent) for e in events)
    assert [(e.side, e.price, e.trade_id) for e in events] == [
        ("sell", "354.04", "1618678150.826417-0"), ("buy", "353.81", "1618678150.827816-1")]
    assert events[0].exchange_ts == 1618678150826417 and events[0].symbol == "XMR-USD"


def test_control_frames():
    m = KrakenSpotMapper()
    assert one(m, {"event": "heartbeat"}).kind == "heartbeat"
    assert one(m, {"event": "pong", "reqid": 7}).kind == "pong"
    assert one(m, {"connectionID": 1, "event": "systemStatus", "status": "online", "version": "1.8.3"}).kind == "status"
    ack = one(m, {"channelID": 1, "channelName": "book-100", "event": "subscriptionStatus", "pair": "XBT/USD",
                  "status": "subscribed", "subscription": {"depth": 100, "name": "book"}})
    assert ack.kind == "ack" and ack.symbol == "BTC-USD"
    err = one(m, {"errorMessage": "Currency pair not supported", "event": "subscriptionStatus", "pair": "FOO/BAR",
                  "status": "error", "subscription": {"name": "book"}})
    assert isinstance(err, ControlEvent) and err.kind == "error" and "not supported" in err.detail
    assert one(m, [1668, {"a": ["1", 1, "1"]}, "ticker", "WAVES/EUR"]).kind == "ignored"
    assert one(m, [1, ["1", "2", "3", "4", "5", "6", "7", "8"], "ohlc-1", "XBT/USD"]).kind == "ignored"


@pytest.mark.parametrize(
    "frame,code,words",
    [
        ('[1664,{"a":[["13.2845","1396.0","1618678133.383209"]],"c":"17633', "MAP-002", "JSON"),
        ([1, {"a": [["NaN", "1.0", "1.0"]]}, "book-10", "XBT/USD"], "MAP-003", "non-negative"),
        ([1, {"b": [["1.0", "-1.0", "1.0"]]}, "book-10", "XBT/USD"], "MAP-003", "non-negative"),
        ([1, {"b": [[1.0, "1.0", "1.0"]]}, "book-10", "XBT/USD"], "MAP-002", "strings"),
        ([1, {"b": [["1.0", "1.0", "1.0", "x"]]}, "book-10", "XBT/USD"], "MAP-002", "flag"),
        ([1, {"b": [["1.0", "1.0", "1.0"]], "c": 123}, "book-10", "XBT/USD"], "MAP-002", "checksum"),
        ([1, {"zz": []}, "book-10", "XBT/USD"], "MAP-002", "none of"),
        ([1, {"b": []}, "book-x", "XBT/USD"], "MAP-002", "depth"),
        ([1, {"b": []}, "book-10", "XBTUSD"], "MAP-004", "not a Kraken pair"),
        ([1, [["1.0", "1.0", "1.0", "x", "m", ""]], "trade", "XBT/USD"], "MAP-003", "side"),
        ([1, {}, "somethingNew", "XBT/USD"], "MAP-001", "unknown Kraken channel"),
        ({"event": "surprise"}, "MAP-001", "unknown Kraken event"),
        ([1, 2], "MAP-002", "elements"),
        ("42", "MAP-002", "array or object"),
    ],
)
def test_bad_frames_are_quarantined(frame, code, words):
    m = KrakenSpotMapper()
    ev = one(m, frame)
    assert isinstance(ev, Quarantine) and ev.code == code and words in ev.reason, ev
    # A bad frame does not change what the mapper knows about the pair's depth.
    assert m.sync_rules().depth_limit("XBT/USD") == 100


def test_symbols_subscriptions_and_depth_configuration():
    m = get_mapper("kraken", book_depth=1000)
    assert m.normalize_symbol("XBT/USD") == "BTC-USD" and m.normalize_symbol("XDG/XBT") == "DOGE-BTC"
    assert m.native_symbol("BTC-USD") == "XBT/USD" and m.native_symbol("DOGE-USD") == "XDG/USD"
    subs = [json.loads(s) for s in m.subscribe_messages(["XBT/USD", "ETH/USD"])]
    assert subs == [
        {"event": "subscribe", "pair": ["XBT/USD", "ETH/USD"], "subscription": {"name": "book", "depth": 1000}},
        {"event": "subscribe", "pair": ["XBT/USD", "ETH/USD"], "subscription": {"name": "trade"}},
    ]
    unsub, sub = (json.loads(s) for s in m.resubscribe_messages("XBT/USD"))
    assert unsub["event"] == "unsubscribe" and sub["event"] == "subscribe" and sub["pair"] == ["XBT/USD"]
    assert m.snapshot_request("XBT/USD") is None and m.ws_url("wss://ws.kraken.com", ["XBT/USD"]) == "wss://ws.kraken.com"
    with pytest.raises(ConfigError):
        KrakenSpotMapper(book_depth=7)
    body = json.dumps({"error": [], "result": {
        "XXBTZUSD": {"altname": "XBTUSD", "wsname": "XBT/USD", "base": "XXBT", "quote": "ZUSD"},
        "XBTUSD.d": {"altname": "XBTUSD.d", "base": "XXBT", "quote": "ZUSD"},
    }})
    (inst,) = m.map_instruments(body)
    assert (inst.symbol, inst.native_symbol, inst.base, inst.quote) == ("BTC-USD", "XBT/USD", "BTC", "USD")


def _snapshot_levels(count: int, stamp=lambda i: f"1618678{i % 100:03d}.{i:06d}") -> list[list]:
    return [[f"{100 + i}.{i:02d}", f"{i + 1}.5", stamp(i)] for i in range(count)]


def _outcome(mapper, levels: list):
    """What the mapper makes of a snapshot whose bids are ``levels``: its levels and time, or the error."""
    frame = json.dumps([1, {"as": [["500.0", "1.0", "1618678100.000001"]], "bs": levels}, "book-1000", "XBT/USD"])
    event = mapper.map_message(frame, TS)[0]
    if isinstance(event, Quarantine):
        return ("quarantined", event.code)
    return (event.bids, event.exchange_ts)


@pytest.mark.parametrize("count", [11, 12, 400])
def test_long_level_lists_are_checked_a_column_at_a_time_with_the_same_outcome(count, monkeypatch):
    # Snapshots of hundreds of levels take the column path (_level_columns):
    # the levels, their order and the latest level time are what the
    # level-by-level loop gives, which the short list (11 levels) always takes.
    import streamer.exchanges.kraken.mapper as kraken

    levels = _snapshot_levels(count)
    levels[count // 2][2] = "1618678199.999999"  # the latest, in the middle
    columns = _outcome(KrakenSpotMapper(), levels)
    monkeypatch.setattr(kraken, "_COLUMNS_FROM", 10**9)
    assert columns == _outcome(KrakenSpotMapper(), levels)
    assert columns[1] == 1618678199999999
    assert columns[0] == [(level[0], level[1]) for level in levels]


@pytest.mark.parametrize("change, accepted", [
    # Timestamps of another shape are Kraken's too: the loop compares them as numbers.
    (lambda levels: levels[3].__setitem__(2, "1618678199.5"), True),
    (lambda levels: levels[3].__setitem__(2, "99999999999.1"), True),
    (lambda levels: levels[5].append("r"), True),
    (lambda levels: levels[5].append("x"), False),
    (lambda levels: levels[7].__setitem__(0, "1e3"), False),
    (lambda levels: levels[7].__setitem__(1, "-1.0"), False),
    (lambda levels: levels[7].__setitem__(1, 1.5), False),
    (lambda levels: levels[9].__setitem__(2, "1618678100.000001\n1618678100.000001"), False),
    (lambda levels: levels[9].__setitem__(2, "NaN"), False),
    (lambda levels: levels.__setitem__(2, ["1.0", "1.0"]), False),
    (lambda levels: levels.__setitem__(2, {"1.0": "1.0"}), False),
])
def test_the_column_path_accepts_and_rejects_what_the_loop_does(change, accepted, monkeypatch):
    import streamer.exchanges.kraken.mapper as kraken

    levels = _snapshot_levels(40)
    change(levels)
    columns = _outcome(KrakenSpotMapper(), levels)
    monkeypatch.setattr(kraken, "_COLUMNS_FROM", 10**9)
    assert columns == _outcome(KrakenSpotMapper(), levels)
    assert (columns[0] != "quarantined") is accepted
