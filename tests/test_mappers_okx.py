"""OKX v5 mapper: books, trades, control frames, checksum and the seqId chain."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pytest

from streamer.book.sync import BookSync
from streamer.exchanges.okx.checksum import okx_checksum
from streamer.exchanges.okx.mapper import OkxMapper
from streamer.exchanges.registry import PROTOCOL_ALIASES, get_mapper
from streamer.models import BookMessage, FeedEventKind, Quarantine, TradeEvent

TS = 1_700_000_000_000_000
REPO = Path(__file__).resolve().parents[1]


def frames_file() -> Path:
    """Current OKX frames (with seqId) next to the captures: ``<captures>/../frames``."""
    captures = Path(os.environ.get("COBY_CAPTURES_DIR", "../shared/fixtures/captures"))
    captures = captures if captures.is_absolute() else REPO / captures
    path = captures.parent / "frames" / "okx-v5.frames.jsonl"
    if not path.is_file():
        pytest.skip(f"OKX sample frames not found at {path} (set COBY_CAPTURES_DIR)")
    return path


def one(mapper, frame):
    events = mapper.map_message(frame if isinstance(frame, (str, bytes)) else json.dumps(frame), TS)
    assert len(events) == 1, events
    return events[0]


def book_frame(action, bids, asks, *, seq=None, prev=None, checksum=0, inst="BTC-USDT", ts="1652459225464"):
    entry = {"asks": [[p, s, "0", "1"] for p, s in asks], "bids": [[p, s, "0", "1"] for p, s in bids],
             "ts": ts, "checksum": checksum}
    if seq is not None:
        entry["seqId"], entry["prevSeqId"] = seq, prev
    return {"arg": {"channel": "books", "instId": inst}, "action": action, "data": [entry]}


def test_checksum_follows_the_documented_algorithm():
    bids = [("3366.1", "7"), ("3366", "6")]
    asks = [("3366.8", "9")]
    text = "3366.1:7:3366.8:9:3366:6"  # interleaved; the longer side continues alone
    crc = zlib.crc32(text.encode())
    expected = crc - 2**32 if crc >= 2**31 else crc
    assert okx_checksum(bids, asks) == expected
    assert -(2**31) <= okx_checksum([(str(i), "1") for i in range(1, 40)], []) < 2**31


def test_book_snapshot_and_update():
    m = OkxMapper()
    ev = one(m, book_frame("snapshot", [("30236.1", "0.18")], [("30236.2", "0.001")], seq=10, prev=-1, checksum=-5))
    assert isinstance(ev, BookMessage) and ev.is_snapshot
    assert (ev.symbol, ev.native_symbol, ev.seq, ev.prev_seq, ev.checksum) == ("BTC-USDT", "BTC-USDT", 10, -1, -5)
    assert ev.bids == [("30236.1", "0.18")] and ev.exchange_ts == 1652459225464000
    upd = one(m, book_frame("update", [], [("30236.2", "0")], seq=11, prev=10, inst="UNI-USD-SWAP"))
    assert not upd.is_snapshot and upd.symbol == "UNI-USD-SWAP" and upd.asks == [("30236.2", "0")]
    # Frames from before seqId existed have no chain.
    old = one(m, book_frame("update", [("1", "1")], []))
    assert (old.seq, old.prev_seq) == (None, None)


def test_trades_and_control_frames():
    m = OkxMapper()
    trade = one(m, {"arg": {"channel": "trades", "instId": "BTC-USD-220527"},
                    "data": [{"instId": "BTC-USD-220527", "tradeId": "7849", "px": "30218.8", "sz": "1",
                              "side": "sell", "ts": "1652459199958"}]})
    assert isinstance(trade, TradeEvent)
    assert (trade.symbol, trade.trade_id, trade.side, trade.exchange_ts) == ("BTC-USD-220527", "7849", "sell", 1652459199958000)
    assert one(m, "pong").kind == "pong" and one(m, b"pong").kind == "pong"
    assert one(m, {"event": "subscribe", "arg": {"channel": "books", "instId": "BTC-USDT"}, "connId": "a"}).kind == "ack"
    err = one(m, {"event": "error", "code": "60012", "msg": "Invalid request", "connId": "a"})
    assert err.kind == "error" and "60012" in err.detail
    assert one(m, {"event": "notice", "code": "64008", "msg": "service upgrade"}).kind == "status"
    assert one(m, {"arg": {"channel": "tickers", "instId": "BTC-USDT"}, "data": [{}]}).kind == "ignored"
    assert one(m, {"arg": {"channel": "candle1m", "instId": "BTC-USDT"}, "data": [[]]}).kind == "ignored"


@pytest.mark.parametrize(
    "frame,code,words",
    [
        ('{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"upd', "MAP-002", "JSON"),
        (book_frame("update", [("NaN", "1")], []), "MAP-003", "non-negative"),
        (book_frame("update", [], [("1", "-2")]), "MAP-003", "non-negative"),
        (book_frame("update", [], [], inst="btc usdt"), "MAP-004", "not an OKX instrument"),
        (book_frame("partial", [], []), "MAP-002", "action"),
        ({"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": "update",
          "data": [{"asks": [], "bids": [], "checksum": "12"}]}, "MAP-002", "integer"),
        ({"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": "update",
          "data": [{"asks": [], "bids": [], "seqId": True}]}, "MAP-002", "integer"),
        ({"arg": {"channel": "trades", "instId": "BTC-USDT"},
          "data": [{"instId": "BTC-USDT", "tradeId": "1", "px": "1", "sz": "1", "side": "up", "ts": "1"}]},
         "MAP-003", "side"),
        ({"arg": {"channel": "newChannel", "instId": "BTC-USDT"}, "data": []}, "MAP-001", "unknown OKX channel"),
        ({"event": "weird"}, "MAP-001", "unknown OKX event"),
        ({"arg": {"channel": "books"}, "data": {}}, "MAP-002", "list"),
        ("ping", "MAP-002", "JSON"),
    ],
)
def test_bad_frames_are_quarantined(frame, code, words):
    ev = one(OkxMapper(), frame)
    assert isinstance(ev, Quarantine) and ev.code == code and words in ev.reason, ev


def test_current_frames_with_seq_ids():
    """Frames OKX serves today (books5 and trades carry a numeric seqId)."""
    m = OkxMapper()
    seen = 0
    for line in frames_file().read_text().splitlines():
        record = json.loads(line)
        data = json.loads(record["data"])
        events = m.map_message(record["data"], TS)
        assert not any(isinstance(e, Quarantine) for e in events), events
        if "seqId" not in record["data"]:
            continue
        seen += 1
        for entry, event in zip(data["data"], events):
            if data["arg"]["channel"] == "books5":
                assert isinstance(event, BookMessage) and event.is_snapshot
                assert event.seq == entry["seqId"] and event.prev_seq is None
                assert event.bids == [(p, s) for p, s, *_ in entry["bids"]]
            else:
                assert isinstance(event, TradeEvent) and event.trade_id == entry["tradeId"]
                assert event.side == entry["side"] and event.price == entry["px"]
    assert seen >= 2


def test_seq_chain_with_zero_checksums_detects_a_broken_chain_and_resyncs():
    m = OkxMapper()
    sync = BookSync("okx", "BTC-USDT", "BTC-USDT", m.sync_rules())
    frames = [
        book_frame("snapshot", [("100", "1"), ("99", "2")], [("101", "1")], seq=1000, prev=-1),
        book_frame("update", [("100", "3")], [], seq=1007, prev=1000),
        book_frame("update", [], [], seq=1007, prev=1007),  # no change: still linked
        book_frame("update", [], [("101", "0"), ("102", "4")], seq=1020, prev=1007),
    ]
    for frame in frames:
        out = sync.on_message(one(m, frame))
        assert len(out.applied) == 1 and not out.needs_resync
    assert sync.last_seq == 1020 and sync.book.best_ask() == ("102", "4")

    broken = sync.on_message(one(m, book_frame("update", [("98", "1")], [], seq=1040, prev=1031)))
    assert [e.kind for e in broken.events] == [FeedEventKind.GAP, FeedEventKind.RESYNC]
    assert broken.needs_resync and broken.applied == [] and not sync.is_synced
    assert "last seq 1020" in broken.events[0].detail and "prev_seq 1031" in broken.events[0].detail
    # The resubscription's snapshot brings the book back; checksum 0 was never verified.
    out = sync.on_message(one(m, book_frame("snapshot", [("97", "1")], [("103", "1")], seq=5, prev=-1)))
    assert sync.is_synced and [e.kind for e in out.events] == [FeedEventKind.SYNCED]
    assert (sync.gaps, sync.checksum_ok, sync.checksum_failed) == (1, 0, 0)


def test_the_last_applied_message_delivered_again_is_dropped_not_a_gap():
    m = OkxMapper()
    sync = BookSync("okx", "BTC-USDT", "BTC-USDT", m.sync_rules())
    snapshot = book_frame("snapshot", [("100", "1")], [("101", "1")], seq=1000, prev=-1)
    update = book_frame("update", [("100", "3")], [], seq=1007, prev=1000)
    for frame in (snapshot, update):
        sync.on_message(one(m, frame))
    again = sync.on_message(one(m, update))
    assert again.applied == [] and not again.needs_resync and again.events == []
    assert sync.is_synced and sync.dropped_stale == 1 and sync.book.best_bid() == ("100", "3")
    # The chain goes on from the message the book ends with.
    out = sync.on_message(one(m, book_frame("update", [("100", "4")], [], seq=1010, prev=1007)))
    assert len(out.applied) == 1 and sync.last_seq == 1010
    # An older message delivered again cannot be told from a lost one: a gap.
    out = sync.on_message(one(m, update))
    assert out.needs_resync and [e.kind for e in out.events] == [FeedEventKind.GAP, FeedEventKind.RESYNC]


def test_subscriptions_and_registry():
    m = get_mapper("OKX")
    assert m.default_endpoints.ws_url == "wss://ws.okx.com:8443/ws/v5/public"
    assert m.default_endpoints.rest_url == "https://www.okx.com"
    (sub,) = m.subscribe_messages(["BTC-USDT"])
    assert json.loads(sub) == {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"},
                                                          {"channel": "trades", "instId": "BTC-USDT"}]}
    assert len(m.subscribe_messages([f"A{i}-USDT" for i in range(120)])) == 3  # 240 args, 100 per frame
    unsub, resub = (json.loads(s) for s in m.resubscribe_messages("BTC-USDT"))
    assert unsub["op"] == "unsubscribe" and resub["args"] == [{"channel": "books", "instId": "BTC-USDT"}]
    assert m.ping_message() == "ping" and 0 < m.ping_interval < 30
    assert m.instruments_request().params == {"instType": "SPOT"}
    assert get_mapper(PROTOCOL_ALIASES["okcoin"]).exchange == "okx"
    assert {PROTOCOL_ALIASES[k] for k in ("binance.us", "binance-us", "binance-tr")} == {"binance"}
    from streamer.errors import UnknownExchangeError

    with pytest.raises(UnknownExchangeError, match="supported: binance, kraken, okx"):
        get_mapper("mtgox")
