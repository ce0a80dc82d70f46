"""Binance spot mapper: frames -> events, REST snapshots, symbols, subscriptions."""

from __future__ import annotations

import json

import pytest

from streamer.errors import UnknownSymbolError
from streamer.exchanges.base import Instrument
from streamer.exchanges.binance.mapper import BinanceSpotMapper
from streamer.exchanges.registry import get_mapper
from streamer.models import BookMessage, ControlEvent, Quarantine, TradeEvent

TS = 1_700_000_000_000_000


def depth(symbol="NKNUSDT", U=101, u=103, bids=(("0.35130000", "6195.00000000"),), asks=()):
    data = {"e": "depthUpdate", "E": 1633998512068, "s": symbol, "U": U, "u": u,
            "b": [list(b) for b in bids], "a": [list(a) for a in asks]}
    return {"stream": f"{symbol.lower()}@depth@100ms", "data": data}


def one(mapper, frame):
    raw = frame if isinstance(frame, (str, bytes)) else json.dumps(frame)
    events = mapper.map_message(raw, TS)
    assert len(events) == 1, events
    return events[0]


def test_depth_update_in_combined_and_raw_form():
    m = BinanceSpotMapper()
    frame = depth(asks=[("0.35260000", "0.00000000")])
    for raw in (json.dumps(frame), json.dumps(frame["data"]), json.dumps(frame).encode()):
        ev = one(m, raw)
        assert isinstance(ev, BookMessage)
        assert (ev.symbol, ev.native_symbol, ev.is_snapshot) == ("NKN-USDT", "NKNUSDT", False)
        assert (ev.seq, ev.prev_seq, ev.first_seq) == (103, 100, 101)
        assert ev.bids == [("0.35130000", "6195.00000000")] and ev.asks == [("0.35260000", "0.00000000")]
        assert ev.exchange_ts == 1633998512068 * 1000 and ev.local_ts == TS


@pytest.mark.parametrize("event,id_field,trade_id", [("trade", "t", 12345), ("aggTrade", "a", 777)])
@pytest.mark.parametrize("buyer_is_maker,side", [(True, "sell"), (False, "buy")])
def test_trades_report_the_taker_side(event, id_field, trade_id, buyer_is_maker, side):
    data = {"e": event, "E": 1, "s": "BLZETH", id_field: trade_id, "p": "0.00006547", "q": "100.00000000",
            "T": 1633998523963, "m": buyer_is_maker, "M": True}
    ev = one(BinanceSpotMapper(), {"stream": f"blzeth@{event}", "data": data})
    assert isinstance(ev, TradeEvent)
    assert (ev.symbol, ev.trade_id, ev.price, ev.size, ev.side) == ("BLZ-ETH", str(trade_id), "0.00006547", "100.00000000", side)
    assert ev.exchange_ts == 1633998523963000


def test_channels_we_do_not_store_acks_and_errors_are_control_events():
    m = BinanceSpotMapper()
    ticker = {"stream": "nknusdt@bookTicker", "data": {"u": 5, "s": "NKNUSDT", "b": "1", "B": "2", "a": "3", "A": "4"}}
    kline = {"stream": "nknusdt@kline_1m", "data": {"e": "kline", "E": 1, "s": "NKNUSDT", "k": {}}}
    assert [one(m, f).kind for f in (ticker, ticker["data"], kline)] == ["ignored"] * 3
    assert one(m, {"result": None, "id": 1}).kind == "ack"
    error = one(m, {"code": 2, "msg": "Invalid request: unknown variable"})
    assert isinstance(error, ControlEvent) and error.kind == "error" and "unknown variable" in error.detail
    assert one(m, {"error": {"code": -1121, "msg": "Invalid symbol."}, "id": 3}).kind == "error"


@pytest.mark.parametrize(
    "frame,code,words",
    [
        ('{"stream":"nknusdt@depth@100ms","data":{"e":"depthUp', "MAP-002", "JSON"),
        (depth(bids=[("NaN", "1")]), "MAP-003", "non-negative"),
        (depth(bids=[("0.35", "-5")]), "MAP-003", "non-negative"),
        (depth(bids=[(0.35, "5")]), "MAP-002", "strings"),
        (depth(U="101"), "MAP-002", "integer"),
        (depth(U=110, u=103), "MAP-003", "U 110 > u 103"),
        (depth(u=2**63), "MAP-003", "64-bit"),
        ({**depth(), "data": {**depth()["data"], "E": 10**20}}, "MAP-002", "milliseconds"),
        (depth(symbol="???"), "MAP-004", "unknown Binance symbol"),
        ({"stream": "x@y", "data": {"e": "somethingNew"}}, "MAP-001", "unknown"),
        ({"stream": "nknusdt@trade", "data": {"e": "trade", "s": "NKNUSDT", "t": 1, "p": "0", "q": "1",
                                              "T": 1, "m": True}}, "MAP-003", "positive"),
        ({"stream": "nknusdt@trade", "data": {"e": "trade", "s": "NKNUSDT", "t": 1, "p": "1", "q": "1",
                                              "T": 1, "m": "yes"}}, "MAP-002", "boolean"),
        ("[1, 2]", "MAP-002", "object"),
        (b"\xff\xfe\x00", "MAP-002", "JSON"),
    ],
)
def test_bad_frames_are_quarantined_with_a_reason(frame, code, words):
    m = BinanceSpotMapper()
    ev = one(m, frame)
    assert isinstance(ev, Quarantine), ev
    assert ev.code == code and words in ev.reason and ev.exchange == "binance" and ev.local_ts == TS
    assert ev.raw  # the raw frame is kept for the quarantine table
    # The mapper keeps working after a bad frame.
    assert isinstance(one(m, depth()), BookMessage)


def test_binary_frames_that_are_not_text_are_kept_base64_in_quarantine():
    ev = one(BinanceSpotMapper(), b"\x1f\x8b\x08\x00garbage")
    assert isinstance(ev, Quarantine) and ev.raw == "H4sIAGdhcmJhZ2U="


def test_rest_snapshot():
    m = BinanceSpotMapper()
    body = json.dumps({"lastUpdateId": 499869752, "bids": [["0.35210000", "672.00000000"]],
                       "asks": [["0.35260000", "3199.00000000"], ["0.35270000", "1.00000000"]]})
    (ev,) = m.map_snapshot("NKNUSDT", body, TS)
    assert isinstance(ev, BookMessage) and ev.is_snapshot and ev.seq == 499869752
    assert ev.asks[1] == ("0.35270000", "1.00000000") and ev.symbol == "NKN-USDT"
    (err,) = m.map_snapshot("NKNUSDT", '{"code":-1121,"msg":"Invalid symbol."}', TS)
    assert isinstance(err, Quarantine) and err.code == "MAP-005" and "Invalid symbol" in err.reason
    (bad,) = m.map_snapshot("NKNUSDT", "<html>502</html>", TS)
    assert isinstance(bad, Quarantine) and bad.code == "MAP-002"


def test_symbols_with_and_without_exchange_info():
    m = BinanceSpotMapper()
    assert [m.normalize_symbol(s) for s in ("NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR", "BTCFDUSD")] == [
        "NKN-USDT", "BLZ-ETH", "LRC-BTC", "RUNE-EUR", "BTC-FDUSD"]
    assert m.native_symbol("eth-usdt") == "ETHUSDT"
    with pytest.raises(UnknownSymbolError):
        m.normalize_symbol("NOQUOTEHERE")
    body = json.dumps({"symbols": [
        {"symbol": "ABCDUSDT", "baseAsset": "ABC", "quoteAsset": "DUSDT"},  # split a suffix rule would get wrong
        {"symbol": "BAD", "baseAsset": "", "quoteAsset": "X"},
    ]})
    instruments = m.map_instruments(body)
    assert instruments == [Instrument("ABC-DUSDT", "ABCDUSDT", "ABC", "DUSDT")]
    m.load_instruments(instruments)
    assert m.normalize_symbol("ABCDUSDT") == "ABC-DUSDT" and m.native_symbol("ABC-DUSDT") == "ABCDUSDT"


def test_subscription_urls_and_requests():
    m = get_mapper("binance")
    assert m.default_endpoints.ws_url == "wss://stream.binance.com:9443"
    assert m.default_endpoints.rest_url == "https://api.binance.com"
    url = m.ws_url("wss://stream.binance.com:9443/", ["NKNUSDT", "BLZETH"])
    assert url == ("wss://stream.binance.com:9443/stream?streams="
                   "nknusdt@depth@100ms/nknusdt@trade/blzeth@depth@100ms/blzeth@trade")
    assert m.subscribe_messages(["NKNUSDT"]) == []
    request = m.snapshot_request("NKNUSDT")
    assert (request.path, request.params) == ("/api/v3/depth", {"symbol": "NKNUSDT", "limit": "1000"})
    assert m.instruments_request().path == "/api/v3/exchangeInfo"
    assert m.sync_rules().snapshot_from_rest is True
