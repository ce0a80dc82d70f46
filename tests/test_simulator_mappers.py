"""Simulator frames through COBY's own mappers and book sync: thousands of
updates with zero checksum failures, zero gaps and nothing quarantined.

The renderers are driven directly (no sockets), with the mappers' own
subscribe and resubscribe messages, so this is exactly what a connection to a
simulated exchange would feed the streamer.
"""

from __future__ import annotations

import pytest

from streamer.book.sync import BookSync
from streamer.exchanges.registry import get_mapper
from streamer.models import BookMessage, ControlEvent, Quarantine, TradeEvent
from streamer.simulator import binance, kraken, okx
from streamer.simulator.market import MarketSimulator
from streamer.simulator.backend import resolve_symbols
from streamer.simulator.protocols import pad_decimals, trim_decimals

START_US = 1_750_000_000_000_000


class Harness:
    """One mapper and one BookSync per symbol, fed with a renderer's frames."""

    def __init__(self, protocol: str, sim: MarketSimulator, mapper, natives: dict[str, str]) -> None:
        self.protocol = protocol
        self.sim = sim
        self.mapper = mapper
        self.syncs = {symbol: BookSync(protocol, symbol, native, mapper.sync_rules())
                      for symbol, native in natives.items()}
        self.trades: list[TradeEvent] = []
        self.controls: list[ControlEvent] = []
        self.quarantined: list[Quarantine] = []
        self.needs_resync: set[str] = set()

    def feed(self, frames: list[str], now_us: int) -> None:
        for frame in frames:
            for event in self.mapper.map_message(frame, now_us):
                self.handle(event)

    def handle(self, event) -> None:
        if isinstance(event, BookMessage):
            outcome = self.syncs[event.symbol].on_message(event)
            if outcome.needs_resync:
                self.needs_resync.add(event.symbol)
        elif isinstance(event, TradeEvent):
            self.trades.append(event)
        elif isinstance(event, Quarantine):
            self.quarantined.append(event)
        else:
            self.controls.append(event)

    def run(self, renderer, seconds: float, step_us: int = 10_000) -> None:
        now = self.sim.now_us
        for _ in range(int(seconds * 1e6 / step_us)):
            now += step_us
            self.feed(renderer.on_market(self.sim.step(now), now), now)

    def totals(self) -> dict[str, int]:
        keys = ("checksum_ok", "checksum_failed", "gaps", "resyncs", "applied_messages", "crossed", "invalid")
        return {k: sum(s.counters()[k] for s in self.syncs.values()) for k in keys}

    def assert_clean(self, min_updates: int) -> dict[str, int]:
        totals = self.totals()
        assert self.quarantined == [], self.quarantined[:3]
        assert [c for c in self.controls if c.kind == "error"] == []
        assert totals["checksum_failed"] == 0 and totals["gaps"] == 0 and totals["resyncs"] == 0, totals
        assert totals["crossed"] == 0 and totals["invalid"] == 0, totals
        assert not self.needs_resync
        assert totals["applied_messages"] >= min_updates, totals
        assert all(s.is_synced for s in self.syncs.values())
        return totals


def specs(protocol: str, names: list[str]):
    return resolve_symbols(protocol, names)


def test_binance_frames_sync_through_the_mapper_without_gaps():
    sim = MarketSimulator(specs("binance", ["BTC-USDT", "ETH-USDT"]), seed=31, start_us=START_US, rate=400,
                          venue="binance")
    mapper = get_mapper("binance")
    mapper.load_instruments(mapper.map_instruments(binance.handle_rest(sim, "/api/v3/exchangeInfo", {}, START_US)[1]))
    natives = ["BTCUSDT", "ETHUSDT"]
    renderer = binance.BinanceRenderer(sim, path="/stream", connection_id=1,
                                       query={"streams": mapper.ws_url("", natives).split("streams=")[1]})
    assert renderer.on_connect(sim.now_us) == [] and renderer.close_code is None
    harness = Harness("binance", sim, mapper, {"BTC-USDT": "BTCUSDT", "ETH-USDT": "ETHUSDT"})
    harness.run(renderer, 1.0)  # deltas buffer while the snapshot is "in flight"
    for symbol, native in (("BTC-USDT", "BTCUSDT"), ("ETH-USDT", "ETHUSDT")):
        request = mapper.snapshot_request(native)
        status, body, _ = binance.handle_rest(sim, request.path, request.params, sim.now_us)
        assert status == 200
        for event in mapper.map_snapshot(native, body, sim.now_us):
            harness.handle(event)
    harness.run(renderer, 160.0, step_us=50_000)
    totals = harness.assert_clean(min_updates=3000)
    assert totals["checksum_ok"] == 0  # Binance has no checksum: the update-id chain is the proof
    # Flush the pending 100 ms batch without moving the market: the synced books
    # are then exactly the simulated ones.
    flush_at = sim.now_us + 100_000
    harness.feed(renderer.on_market([], flush_at), flush_at)
    for symbol, sync in harness.syncs.items():
        book = sim.book(symbol)
        assert sync.last_seq == book.seq
        for side in ("bid", "ask"):
            assert sync.book.top(side, 1000) == [(pad_decimals(p, 8), pad_decimals(s, 8))
                                                 for p, s in book.levels(side)]
    assert len(harness.trades) > 1000
    assert {t.side for t in harness.trades} == {"buy", "sell"}


@pytest.mark.parametrize("depth", [10, 100, 1000])
def test_kraken_frames_sync_through_the_mapper_with_every_checksum_valid(depth):
    sim = MarketSimulator(specs("kraken", ["BTC-USD", "ETH-USD"]), seed=32, start_us=START_US, rate=300,
                          venue="kraken")
    mapper = get_mapper("kraken", book_depth=depth)
    mapper.load_instruments(mapper.map_instruments(kraken.handle_rest(sim, "/0/public/AssetPairs", {}, START_US)[1]))
    assert mapper.normalize_symbol("XBT/USD") == "BTC-USD"
    renderer = kraken.KrakenRenderer(sim, path="/", query={}, connection_id=1)
    harness = Harness("kraken", sim, mapper, {"BTC-USD": "XBT/USD", "ETH-USD": "ETH/USD"})
    harness.feed(renderer.on_connect(sim.now_us), sim.now_us)
    for message in mapper.subscribe_messages(["XBT/USD", "ETH/USD"]):
        harness.feed(renderer.on_message(message, sim.now_us), sim.now_us)
    harness.run(renderer, 20.0)
    # The mapper's resync path: unsubscribe + subscribe gives a fresh snapshot.
    for message in mapper.resubscribe_messages("XBT/USD"):
        harness.feed(renderer.on_message(message, sim.now_us), sim.now_us)
    harness.run(renderer, 3.0)
    totals = harness.assert_clean(min_updates=3000)
    assert totals["checksum_ok"] >= 3000
    assert harness.syncs["BTC-USD"].snapshots == 2
    assert len(harness.trades) > 500
    for symbol, sync in harness.syncs.items():
        assert sync.book.top("ask", depth) == [(p, pad_decimals(s, 8)) for p, s in sim.book(symbol).levels("ask", depth)]


@pytest.mark.parametrize("zero_checksum", [False, True], ids=["checksum", "checksum-0"])
def test_okx_frames_sync_through_the_mapper_with_seq_chain_and_checksums(zero_checksum):
    sim = MarketSimulator(specs("okx", ["BTC-USDT", "ETH-USDT"]), seed=33, start_us=START_US, rate=300, venue="okx")
    mapper = get_mapper("okx")
    mapper.load_instruments(mapper.map_instruments(
        okx.handle_rest(sim, "/api/v5/public/instruments", {"instType": "SPOT"}, START_US)[1]))
    renderer = okx.OkxRenderer(sim, path="/ws/v5/public", query={}, connection_id=1, zero_checksum=zero_checksum)
    harness = Harness("okx", sim, mapper, {"BTC-USDT": "BTC-USDT", "ETH-USDT": "ETH-USDT"})
    for message in mapper.subscribe_messages(["BTC-USDT", "ETH-USDT"]):
        harness.feed(renderer.on_message(message, sim.now_us), sim.now_us)
    harness.feed(renderer.on_message(mapper.ping_message(), sim.now_us), sim.now_us)
    assert any(c.kind == "pong" for c in harness.controls)
    harness.run(renderer, 140.0, step_us=50_000)
    for message in mapper.resubscribe_messages("ETH-USDT"):
        harness.feed(renderer.on_message(message, sim.now_us), sim.now_us)
    harness.run(renderer, 20.0, step_us=50_000)
    totals = harness.assert_clean(min_updates=3000)
    if zero_checksum:
        assert totals["checksum_ok"] == 0
    else:
        assert totals["checksum_ok"] == totals["applied_messages"]
    assert harness.syncs["ETH-USDT"].snapshots == 2
    for symbol, sync in harness.syncs.items():
        assert sync.book.top("bid", 400) == [(trim_decimals(p), trim_decimals(s))
                                             for p, s in sim.book(symbol).levels("bid", 400)]
    assert len(harness.trades) > 1000
