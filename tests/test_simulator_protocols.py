"""Protocol renderers (no I/O): native frame formats, sequencing and checksums.

Every book frame is applied to an independent reference client
(``test_simulator_reference``) that follows the exchange's documented rules;
after each frame its book must equal the simulated book (as the exchange's
client would see it at the subscribed depth).
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from streamer.simulator import binance, kraken, okx
from streamer.simulator.market import MarketParams, MarketSimulator, MarketTrade, SimSymbol
from streamer.simulator.protocols import pad_decimals, trim_decimals
from .test_simulator_reference import (
    RefBinanceBook,
    RefKrakenBook,
    RefOkxBook,
    ref_kraken_checksum,
    ref_okx_checksum,
)

START_US = 1_750_000_000_000_000
TICK_US = 10_000

BTC_USDT = SimSymbol("BTC", "USDT", "60000", "0.01", "0.00001", 2)
ETH_USDT = SimSymbol("ETH", "USDT", "3000", "0.01", "0.0001", 2)
BTC_USD = SimSymbol("BTC", "USD", "60000", "0.1", "0.00000001", 1)
ETH_USD = SimSymbol("ETH", "USD", "3000", "0.01", "0.00000001", 2)
#: A small, busy book: windows of 10-25 levels see levels enter and leave all the time.
THIN = MarketParams(target_levels=30, max_levels=45, min_levels=5, warmup_actions=500)


def steps(sim: MarketSimulator, renderer, seconds: float, step_us: int = TICK_US):
    """Advance the market and yield ``(now, frames)`` for each step, as the backend would."""
    now = sim.now_us
    for _ in range(int(seconds * 1e6 / step_us)):
        now += step_us
        events = sim.step(now)
        yield now, renderer.on_market(events, now)


def test_decimal_helpers():
    assert pad_decimals("60000.1", 8) == "60000.10000000"
    assert pad_decimals("15", 2) == "15.00"
    assert pad_decimals("0.12345678", 8) == "0.12345678"
    assert trim_decimals("60000.10") == "60000.1"
    assert trim_decimals("60000.00") == "60000"
    assert trim_decimals("0.00000") == "0"
    assert trim_decimals("120") == "120"


# ---------------------------------------------------------------------------
# Binance
# ---------------------------------------------------------------------------


def binance_renderer(sim, path="/stream", streams="btcusdt@depth@100ms/btcusdt@trade/ethusdt@depth@100ms"):
    query = {"streams": streams} if streams is not None else {}
    renderer = binance.BinanceRenderer(sim, path=path, query=query, connection_id=1)
    assert renderer.on_connect(sim.now_us) == []
    return renderer


def test_binance_depth_events_are_contiguous_and_bridge_a_rest_snapshot():
    sim = MarketSimulator([BTC_USDT, ETH_USDT], seed=1, start_us=START_US, rate=300)
    renderer = binance_renderer(sim)
    refs = {"BTCUSDT": RefBinanceBook(), "ETHUSDT": RefBinanceBook()}
    last_u: dict[str, int] = {}
    events = trades = compared = 0
    for i, (now, frames) in enumerate(steps(sim, renderer, 20)):
        for frame in frames:
            msg = json.loads(frame)
            assert list(msg) == ["stream", "data"]
            data = msg["data"]
            if data["e"] == "depthUpdate":
                assert msg["stream"] == data["s"].lower() + "@depth@100ms"
                assert list(data) == ["e", "E", "s", "U", "u", "b", "a"]
                assert data["E"] == now // 1000
                for price, size in data["b"] + data["a"]:
                    assert len(price.split(".")[1]) == 8 and len(size.split(".")[1]) == 8
                if data["s"] in last_u:
                    assert data["U"] == last_u[data["s"]] + 1
                last_u[data["s"]] = data["u"]
                refs[data["s"]].on_event(data)
                events += 1
            else:
                assert msg["stream"] == "btcusdt@trade"
                assert list(data) == ["e", "E", "s", "t", "p", "q", "T", "m", "M"]
                assert isinstance(data["m"], bool) and Decimal(data["q"]) > 0
                trades += 1
        if i in (150, 420):  # REST snapshots taken mid-stream, between two 100 ms events
            for native in refs:
                status, body, ctype = binance.handle_rest(sim, "/api/v3/depth", {"symbol": native, "limit": "5000"}, now)
                assert status == 200 and ctype == "application/json"
                snapshot = json.loads(body)
                assert list(snapshot) == ["lastUpdateId", "bids", "asks"]
                if i == 150:
                    refs[native].on_snapshot(snapshot)
                else:
                    # A later snapshot is exactly the book the diff stream has built by then,
                    # once the pending 100 ms batch is applied.
                    assert snapshot["lastUpdateId"] >= refs[native].last_id
        if frames and refs["BTCUSDT"].last_id == sim.book("BTC-USDT").seq:
            ref = refs["BTCUSDT"]
            book = sim.book("BTC-USDT")
            assert ref.bids.sorted() == [(pad_decimals(p, 8), pad_decimals(s, 8)) for p, s in book.levels("bid")]
            assert ref.asks.sorted() == [(pad_decimals(p, 8), pad_decimals(s, 8)) for p, s in book.levels("ask")]
            compared += 1
    assert events > 300 and trades > 50 and compared > 50
    for ref in refs.values():
        assert ref.applied > 100


def test_binance_trade_maker_flag_is_the_opposite_of_the_taker_side():
    sim = MarketSimulator([BTC_USDT], seed=2, start_us=START_US, rate=300)
    renderer = binance_renderer(sim, streams="btcusdt@trade/btcusdt@aggTrade")
    now = sim.now_us
    checked = {True: 0, False: 0}
    for _ in range(500):
        now += TICK_US
        events = sim.step(now)
        fills = {e.trade_id: e for e in events if isinstance(e, MarketTrade)}
        for frame in renderer.on_market(events, now):
            data = json.loads(frame)["data"]
            if data["e"] == "trade":
                fill = fills[data["t"]]
                # "m": the buyer is the maker, i.e. the taker sold.
                assert data["m"] is (fill.taker_side == "sell")
                assert (data["p"], data["q"]) == (pad_decimals(fill.price, 8), pad_decimals(fill.size, 8))
                assert data["T"] == fill.ts_us // 1000
                checked[data["m"]] += 1
            else:
                assert data["e"] == "aggTrade" and data["f"] == data["l"] == data["a"]
                assert data["m"] is (fills[data["a"]].taker_side == "sell")
    assert checked[True] > 10 and checked[False] > 10


def test_binance_raw_streams_and_subscribe_requests():
    sim = MarketSimulator([BTC_USDT, ETH_USDT], seed=3, start_us=START_US, rate=300)
    renderer = binance.BinanceRenderer(sim, path="/ws", query={}, connection_id=1)
    assert renderer.on_connect(sim.now_us) == [] and renderer.close_code is None
    assert list(steps(sim, renderer, 0.5))[-1][1] == []  # nothing subscribed yet
    reply = renderer.on_message('{"method":"SUBSCRIBE","params":["ethusdt@depth@100ms","ethusdt@bookTicker"],"id":7}',
                                sim.now_us)
    assert [json.loads(r) for r in reply] == [{"result": None, "id": 7}]
    listed = json.loads(renderer.on_message('{"method":"LIST_SUBSCRIPTIONS","id":8}', sim.now_us)[0])
    assert listed == {"result": ["ethusdt@depth@100ms", "ethusdt@bookTicker"], "id": 8}
    kinds = set()
    for _, frames in steps(sim, renderer, 2):
        for frame in frames:
            data = json.loads(frame)
            assert "stream" not in data  # raw payloads on /ws
            kinds.add(data.get("e", "bookTicker"))
            if "e" not in data:
                assert list(data) == ["u", "s", "b", "B", "a", "A"] and data["s"] == "ETHUSDT"
                assert Decimal(data["b"]) < Decimal(data["a"])
    assert kinds == {"depthUpdate", "bookTicker"}
    error = json.loads(renderer.on_message('{"method":"SUBSCRIBE","params":["adausdt@trade"],"id":9}', sim.now_us)[0])
    assert error["id"] == 9 and error["error"]["code"] == 2 and "adausdt@trade" in error["error"]["msg"]
    assert json.loads(renderer.on_message("not json", sim.now_us)[0])["error"]["code"] == 3
    assert json.loads(renderer.on_message('{"method":"UNSUBSCRIBE","params":["ethusdt@depth@100ms"],"id":10}',
                                          sim.now_us)[0]) == {"result": None, "id": 10}
    for _, frames in steps(sim, renderer, 1):
        assert all("e" not in json.loads(f) for f in frames)


def test_binance_depth_1000ms_batches_per_second():
    sim = MarketSimulator([BTC_USDT], seed=4, start_us=START_US, rate=100)
    renderer = binance_renderer(sim, streams="btcusdt@depth")
    times = [json.loads(f)["data"]["E"] for _, frames in steps(sim, renderer, 5) for f in frames]
    assert len(times) == 5
    assert all(b - a == 1000 for a, b in zip(times, times[1:]))


def test_binance_rejects_unknown_paths_and_streams():
    sim = MarketSimulator([BTC_USDT], seed=1, start_us=START_US)
    bad_path = binance.BinanceRenderer(sim, path="/foo", query={}, connection_id=1)
    assert bad_path.close_code == 1008
    bad_stream = binance_renderer(sim, streams="btcusdt@depth@100ms/dogeusdt@trade")
    assert bad_stream.close_code == 1008 and "dogeusdt@trade" in bad_stream.close_reason


def test_binance_rest_endpoints():
    sim = MarketSimulator([BTC_USDT, ETH_USDT], seed=1, start_us=START_US)
    status, body, _ = binance.handle_rest(sim, "/api/v3/exchangeInfo", {}, START_US)
    info = json.loads(body)
    assert status == 200 and info["serverTime"] == START_US // 1000
    assert [(s["symbol"], s["baseAsset"], s["quoteAsset"]) for s in info["symbols"]] == [
        ("BTCUSDT", "BTC", "USDT"), ("ETHUSDT", "ETH", "USDT")]
    filters = {f["filterType"]: f for f in info["symbols"][0]["filters"]}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.01000000"
    assert filters["LOT_SIZE"]["stepSize"] == "0.00001000"
    one = json.loads(binance.handle_rest(sim, "/api/v3/exchangeInfo", {"symbol": "ETHUSDT"}, START_US)[1])
    assert [s["symbol"] for s in one["symbols"]] == ["ETHUSDT"]
    depth = json.loads(binance.handle_rest(sim, "/api/v3/depth", {"symbol": "BTCUSDT", "limit": "5"}, START_US)[1])
    assert len(depth["bids"]) == len(depth["asks"]) == 5
    assert Decimal(depth["bids"][0][0]) < Decimal(depth["asks"][0][0])
    assert depth["lastUpdateId"] == sim.book("BTC-USDT").seq
    assert binance.handle_rest(sim, "/api/v3/depth", {"symbol": "NOPE"}, START_US)[:2] == \
        (400, '{"code":-1121,"msg":"Invalid symbol."}')
    assert binance.handle_rest(sim, "/api/v3/depth", {}, START_US)[0] == 400
    assert binance.handle_rest(sim, "/api/v3/depth", {"symbol": "BTCUSDT", "limit": "x"}, START_US)[0] == 400
    assert binance.handle_rest(sim, "/api/v3/nothing", {}, START_US)[0] == 404


# ---------------------------------------------------------------------------
# Kraken
# ---------------------------------------------------------------------------


def kraken_client_view(sim: MarketSimulator, symbol: str, depth: int):
    book = sim.book(symbol)
    asks = [(p, pad_decimals(s, 8)) for p, s in book.levels("ask", depth)]
    bids = [(p, pad_decimals(s, 8)) for p, s in book.levels("bid", depth)]
    return asks, bids


@pytest.mark.parametrize("depth, params", [(10, THIN), (25, THIN), (100, None), (1000, None)],
                         ids=["depth10-thin", "depth25-thin", "depth100", "depth1000"])
def test_kraken_updates_keep_a_truncating_client_exact(depth, params):
    sim = MarketSimulator([BTC_USD, ETH_USD], seed=5, start_us=START_US, rate=300, params=params)
    renderer = kraken.KrakenRenderer(sim, path="/", query={}, connection_id=1)
    status = json.loads(renderer.on_connect(sim.now_us)[0])
    assert status["event"] == "systemStatus" and status["status"] == "online"
    replies = [json.loads(r) for r in renderer.on_message(json.dumps(
        {"event": "subscribe", "pair": ["XBT/USD", "ETH/USD"], "subscription": {"name": "book", "depth": depth},
         "reqid": 42}), sim.now_us)]
    acks = [r for r in replies if isinstance(r, dict)]
    snapshots = [r for r in replies if isinstance(r, list)]
    assert [a["pair"] for a in acks] == ["XBT/USD", "ETH/USD"]
    for ack in acks:
        assert list(ack) == ["channelID", "channelName", "event", "pair", "reqid", "status", "subscription"]
        assert ack["channelName"] == f"book-{depth}" and ack["status"] == "subscribed" and ack["reqid"] == 42
        assert ack["subscription"] == {"depth": depth, "name": "book"}
    channels = {a["channelID"]: a["pair"] for a in acks}
    assert len(channels) == 2
    refs = {pair: RefKrakenBook(depth) for pair in channels.values()}
    symbols = {"XBT/USD": "BTC-USD", "ETH/USD": "ETH-USD"}
    for snap in snapshots:
        assert set(snap[1]) == {"as", "bs"} and snap[2] == f"book-{depth}"
        assert len(snap[1]["as"]) == min(depth, sim.book(symbols[snap[3]]).count("ask"))
        refs[snap[3]].apply(snap)
    republished = 0
    for _, frames in steps(sim, renderer, 8):
        for frame in frames:
            msg = json.loads(frame)
            pair = msg[-1]
            assert channels[msg[0]] == pair and msg[-2] == f"book-{depth}"
            republished += sum(len(level) == 4 for part in msg[1:-2] for key in ("a", "b")
                               for level in part.get(key, []))
            refs[pair].apply(msg)  # asserts the checksum
            asks, bids = kraken_client_view(sim, symbols[pair], depth)
            assert refs[pair].asks.sorted() == asks
            assert refs[pair].bids.sorted() == bids
    assert all(ref.checksums_ok > 200 for ref in refs.values())
    if params is THIN:
        assert republished > 0, "deletions inside a small window must republish the levels moving in"


def test_kraken_trades_heartbeats_and_pings():
    sim = MarketSimulator([BTC_USD], seed=6, start_us=START_US, rate=200)
    renderer = kraken.KrakenRenderer(sim, path="/", query={}, connection_id=1)
    renderer.on_connect(sim.now_us)
    ack = json.loads(renderer.on_message(
        '{"event":"subscribe","pair":["XBT/USD"],"subscription":{"name":"trade"}}', sim.now_us)[0])
    assert ack["channelName"] == "trade" and ack["subscription"] == {"name": "trade"}
    rows = []
    for _, frames in steps(sim, renderer, 3):
        for frame in frames:
            msg = json.loads(frame)
            assert msg[0] == ack["channelID"] and msg[2:] == ["trade", "XBT/USD"]
            rows.extend(msg[1])
    assert len(rows) > 20
    for price, volume, stamp, side, order_type, misc in rows:
        assert len(price.split(".")[1]) == 1 and len(volume.split(".")[1]) == 8
        assert side in ("b", "s") and order_type in ("m", "l") and misc == ""
        assert len(stamp.split(".")[1]) == 6
    # An idle subscription gets a heartbeat about every second.
    quiet = MarketSimulator([BTC_USD], seed=6, start_us=START_US, rate=0.001)
    idle = kraken.KrakenRenderer(quiet, path="/", query={}, connection_id=2)
    idle.on_connect(quiet.now_us)
    idle.on_message('{"event":"subscribe","pair":["XBT/USD"],"subscription":{"name":"trade"}}', quiet.now_us)
    beats = [f for _, frames in steps(quiet, idle, 3.5, step_us=100_000) for f in frames]
    assert beats == ['{"event":"heartbeat"}'] * 3
    assert json.loads(renderer.on_message('{"event":"ping","reqid":5}', sim.now_us)[0]) == {"event": "pong", "reqid": 5}


def test_kraken_resubscribe_sends_a_fresh_snapshot():
    sim = MarketSimulator([BTC_USD], seed=7, start_us=START_US, rate=300, params=THIN)
    renderer = kraken.KrakenRenderer(sim, path="/", query={}, connection_id=1)
    renderer.on_connect(sim.now_us)
    sub = '{"event":"subscribe","pair":["XBT/USD"],"subscription":{"name":"book","depth":10}}'
    ref = RefKrakenBook(10)
    ref.apply(json.loads(renderer.on_message(sub, sim.now_us)[1]))
    for _, frames in steps(sim, renderer, 1):
        for f in frames:
            ref.apply(json.loads(f))
    already = json.loads(renderer.on_message(sub, sim.now_us)[0])
    assert already["status"] == "error" and already["errorMessage"] == "Already subscribed"
    unsub = json.loads(renderer.on_message(sub.replace('"subscribe"', '"unsubscribe"'), sim.now_us)[0])
    assert unsub["status"] == "unsubscribed"
    assert [f for _, frames in steps(sim, renderer, 0.5) for f in frames] == []
    ack, snapshot = (json.loads(r) for r in renderer.on_message(sub, sim.now_us))
    assert ack["channelID"] != unsub["channelID"]
    fresh = RefKrakenBook(10)
    fresh.apply(snapshot)
    for _, frames in steps(sim, renderer, 2):
        for f in frames:
            fresh.apply(json.loads(f))
    assert fresh.checksums_ok > 50


@pytest.mark.parametrize(
    "request_text, error",
    [
        ('{"event":"subscribe","pair":["XBT/EUR"],"subscription":{"name":"book"}}', "Currency pair not supported XBT/EUR"),
        ('{"event":"subscribe","pair":["XBT/USD"],"subscription":{"name":"book","depth":42}}',
         "Subscription depth not supported"),
        ('{"event":"subscribe","pair":["XBT/USD"],"subscription":{"name":"ohlc"}}', "Subscription name invalid"),
        ('{"event":"unsubscribe","pair":["XBT/USD"],"subscription":{"name":"book"}}', "Subscription Not Found"),
        ('{"event":"subscribe","pair":"XBT/USD","subscription":{"name":"book"}}', "Pair field"),
        ("[1,2", "Malformed request"),
        ('{"event":"dance"}', "Unsupported event"),
    ],
)
def test_kraken_request_errors(request_text, error):
    sim = MarketSimulator([BTC_USD], seed=1, start_us=START_US)
    renderer = kraken.KrakenRenderer(sim, path="/", query={}, connection_id=1)
    reply = json.loads(renderer.on_message(request_text, sim.now_us)[0])
    assert reply["errorMessage"] == error or reply["errorMessage"].startswith(error)
    assert reply.get("status", "error") == "error"


def test_kraken_checksum_matches_the_reference_and_the_rest_pairs():
    sim = MarketSimulator([BTC_USD, ETH_USD], seed=1, start_us=START_US)
    renderer = kraken.KrakenRenderer(sim, path="/", query={}, connection_id=1)
    asks, bids = kraken_client_view(sim, "BTC-USD", 10)
    assert renderer.checksum(sim.book("BTC-USD")) == ref_kraken_checksum(asks, bids)
    result = json.loads(kraken.handle_rest(sim, "/0/public/AssetPairs", {}, START_US)[1])
    assert result["error"] == []
    pairs = result["result"]
    assert set(pairs) == {"XXBTZUSD", "XETHZUSD"}
    assert pairs["XXBTZUSD"]["wsname"] == "XBT/USD" and pairs["XXBTZUSD"]["altname"] == "XBTUSD"
    assert pairs["XXBTZUSD"]["pair_decimals"] == 1 and pairs["XXBTZUSD"]["tick_size"] == "0.1"
    filtered = json.loads(kraken.handle_rest(sim, "/0/public/AssetPairs", {"pair": "ETHUSD"}, START_US)[1])
    assert list(filtered["result"]) == ["XETHZUSD"]
    unknown = json.loads(kraken.handle_rest(sim, "/0/public/AssetPairs", {"pair": "DOGEUSD"}, START_US)[1])
    assert unknown["error"] == ["EQuery:Unknown asset pair"]
    assert json.loads(kraken.handle_rest(sim, "/0/public/Time", {}, START_US)[1])["result"]["unixtime"] == \
        START_US // 1_000_000


# ---------------------------------------------------------------------------
# OKX
# ---------------------------------------------------------------------------


def okx_view(sim: MarketSimulator, symbol: str, depth: int = 400):
    book = sim.book(symbol)
    return ([(trim_decimals(p), trim_decimals(s)) for p, s in book.levels("bid", depth)],
            [(trim_decimals(p), trim_decimals(s)) for p, s in book.levels("ask", depth)])


@pytest.mark.parametrize("zero_checksum", [False, True], ids=["checksum", "checksum-0"])
@pytest.mark.parametrize("params", [None, MarketParams(target_levels=550, max_levels=700)],
                         ids=["default", "deep-book"])
def test_okx_books_keep_a_client_exact_with_seq_chain(zero_checksum, params):
    sim = MarketSimulator([BTC_USDT, ETH_USDT], seed=8, start_us=START_US, rate=300, params=params)
    renderer = okx.OkxRenderer(sim, path="/ws/v5/public", query={}, connection_id=1, zero_checksum=zero_checksum)
    assert renderer.on_connect(sim.now_us) == []
    assert renderer.auto_replies == {"ping": "pong"}
    replies = [json.loads(r) for r in renderer.on_message(json.dumps({"id": "1", "op": "subscribe", "args": [
        {"channel": "books", "instId": "BTC-USDT"}, {"channel": "books", "instId": "ETH-USDT"}]}), sim.now_us)]
    acks = [r for r in replies if "event" in r]
    assert [list(a) for a in acks] == [["id", "event", "arg", "connId"]] * 2
    assert len(acks[0]["connId"]) == 8
    refs = {"BTC-USDT": RefOkxBook(), "ETH-USDT": RefOkxBook()}
    last_ts: dict[str, int] = {}
    deeper_than_window = 0
    for snap in (r for r in replies if "action" in r):
        data = snap["data"][0]
        assert snap["action"] == "snapshot" and data["prevSeqId"] == -1
        assert list(data) == ["asks", "bids", "ts", "checksum", "prevSeqId", "seqId"]
        assert len(data["asks"]) == min(400, sim.book(snap["arg"]["instId"]).count("ask"))
        refs[snap["arg"]["instId"]].apply(snap)
    for _, frames in steps(sim, renderer, 8):
        for frame in frames:
            msg = json.loads(frame)
            inst = msg["arg"]["instId"]
            data = msg["data"][0]
            assert msg["action"] == "update"
            assert data["seqId"] > data["prevSeqId"]
            ts = int(data["ts"])
            assert ts - last_ts.get(inst, ts - 100) >= 100
            last_ts[inst] = ts
            if zero_checksum:
                assert data["checksum"] == 0
            for level in data["asks"] + data["bids"]:
                assert level[2] == "0" and (level[1] == "0") == (level[3] == "0")
                assert not level[0].endswith("0") or "." not in level[0]
            refs[inst].apply(msg)  # asserts the chain and the checksum
            deeper_than_window += sim.book(inst).count("bid") > 400
            bids, asks = okx_view(sim, inst)
            assert refs[inst].bids.sorted() == bids and refs[inst].asks.sorted() == asks
    for ref in refs.values():
        assert ref.updates > 50
        assert ref.checksums_ok == (0 if zero_checksum else ref.updates + 1)
    if params is not None:
        assert deeper_than_window > 50, "the deep book must exercise the 400-level window"


def test_okx_trades_ping_unsubscribe_and_errors():
    sim = MarketSimulator([BTC_USDT], seed=9, start_us=START_US, rate=300)
    renderer = okx.OkxRenderer(sim, path="/ws/v5/public", query={}, connection_id=3)
    assert renderer.on_message("ping", sim.now_us) == ["pong"]
    ack = json.loads(renderer.on_message('{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT"}]}',
                                         sim.now_us)[0])
    assert ack == {"event": "subscribe", "arg": {"channel": "trades", "instId": "BTC-USDT"}, "connId": ack["connId"]}
    trades = [json.loads(f) for _, frames in steps(sim, renderer, 2) for f in frames]
    assert len(trades) > 20
    ids = []
    for msg in trades:
        (data,) = msg["data"]
        assert list(data) == ["instId", "tradeId", "px", "sz", "side", "ts", "count", "source", "seqId"]
        assert data["side"] in ("buy", "sell") and Decimal(data["sz"]) > 0 and data["count"] == "1"
        ids.append(int(data["tradeId"]))
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    unsub = json.loads(renderer.on_message('{"op":"unsubscribe","args":[{"channel":"trades","instId":"BTC-USDT"}]}',
                                           sim.now_us)[0])
    assert unsub["event"] == "unsubscribe"
    assert [f for _, frames in steps(sim, renderer, 1) for f in frames] == []
    wrong = json.loads(renderer.on_message('{"op":"subscribe","args":[{"channel":"books","instId":"DOGE-USDT"}]}',
                                           sim.now_us)[0])
    assert wrong["event"] == "error" and wrong["code"] == "60018" and "DOGE-USDT" in wrong["msg"]
    bad = json.loads(renderer.on_message("{oops", sim.now_us)[0])
    assert bad["event"] == "error" and bad["code"] == "60012"


def test_okx_resubscribe_restarts_the_chain_with_a_snapshot():
    sim = MarketSimulator([BTC_USDT], seed=10, start_us=START_US, rate=300)
    renderer = okx.OkxRenderer(sim, path="/ws/v5/public", query={}, connection_id=1)
    sub = '{"op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"}]}'
    ref = RefOkxBook()
    ref.apply(json.loads(renderer.on_message(sub, sim.now_us)[1]))
    for _, frames in steps(sim, renderer, 1):
        for f in frames:
            ref.apply(json.loads(f))
    again = [json.loads(r) for r in renderer.on_message(sub, sim.now_us)]
    assert again[1]["action"] == "snapshot" and again[1]["data"][0]["prevSeqId"] == -1
    fresh = RefOkxBook()
    fresh.apply(again[1])
    for _, frames in steps(sim, renderer, 1):
        for f in frames:
            fresh.apply(json.loads(f))
    assert fresh.updates > 5


def test_okx_checksum_and_rest():
    sim = MarketSimulator([BTC_USDT, ETH_USDT], seed=1, start_us=START_US)
    renderer = okx.OkxRenderer(sim, path="/ws/v5/public", query={}, connection_id=1)
    bids, asks = okx_view(sim, "BTC-USDT", 25)
    assert renderer.checksum(sim.book("BTC-USDT")) == ref_okx_checksum(bids, asks)
    status, body, _ = okx.handle_rest(sim, "/api/v5/public/instruments", {"instType": "SPOT"}, START_US)
    data = json.loads(body)
    assert status == 200 and data["code"] == "0"
    assert [(i["instId"], i["baseCcy"], i["quoteCcy"], i["tickSz"], i["state"]) for i in data["data"]] == [
        ("BTC-USDT", "BTC", "USDT", "0.01", "live"), ("ETH-USDT", "ETH", "USDT", "0.01", "live")]
    missing = okx.handle_rest(sim, "/api/v5/public/instruments", {}, START_US)
    assert missing[0] == 400 and json.loads(missing[1])["code"] == "50014"
    books = json.loads(okx.handle_rest(sim, "/api/v5/market/books", {"instId": "ETH-USDT", "sz": "3"}, START_US)[1])
    assert len(books["data"][0]["asks"]) == 3
    assert okx.handle_rest(sim, "/api/v5/market/books", {"instId": "X-Y"}, START_US)[0] == 400
