"""The synthetic market: determinism, book invariants, bounded memory, dynamics."""

from __future__ import annotations

import math
import tracemalloc
from decimal import Decimal

import pytest

from streamer.errors import ConfigError, InvalidSymbolError
from streamer.simulator.market import (
    LevelChange,
    MarketParams,
    MarketSimulator,
    MarketTrade,
    SimSymbol,
    format_units,
)

START_US = 1_750_000_000_000_000
BTC = SimSymbol("BTC", "USDT", "60000", "0.01", "0.00001", 2)
ETH = SimSymbol("ETH", "USDT", "3000", "0.01", "0.0001", 2)
SOL = SimSymbol("SOL", "USD", "150", "0.01", "0.00000001", 2)


def run(sim: MarketSimulator, seconds: float, step_us: int = 100_000) -> list:
    events = []
    now = sim.now_us
    end = sim.start_us + int(seconds * 1e6)
    while now < end:
        now = min(end, now + step_us)
        events.extend(sim.step(now))
    return events


def as_tuples(events) -> list[tuple]:
    out = []
    for e in events:
        if isinstance(e, LevelChange):
            out.append(("L", e.symbol, e.side, e.ticks, e.price, e.size, e.orders, e.ts_us, e.seq, e.was_present))
        else:
            out.append(("T", e.symbol, e.trade_id, e.order_id, e.price, e.size, e.taker_side, e.ts_us))
    return out


# ---------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------


def test_same_seed_same_events_and_books():
    a = MarketSimulator([BTC, ETH], seed=7, start_us=START_US)
    b = MarketSimulator([BTC, ETH], seed=7, start_us=START_US)
    assert a.book("BTC-USDT").levels("bid") == b.book("BTC-USDT").levels("bid")
    events_a, events_b = as_tuples(run(a, 60)), as_tuples(run(b, 60))
    assert len(events_a) > 1000
    assert events_a == events_b
    for symbol in ("BTC-USDT", "ETH-USDT"):
        for side in ("bid", "ask"):
            assert a.book(symbol).levels(side) == b.book(symbol).levels(side)


def test_different_seed_different_events():
    a = as_tuples(run(MarketSimulator([BTC], seed=1, start_us=START_US), 10))
    b = as_tuples(run(MarketSimulator([BTC], seed=2, start_us=START_US), 10))
    assert a != b


def test_events_do_not_depend_on_how_time_is_sliced():
    coarse = MarketSimulator([BTC, ETH], seed=3, start_us=START_US)
    fine = MarketSimulator([BTC, ETH], seed=3, start_us=START_US)
    coarse_events = run(coarse, 30, step_us=1_000_000)
    fine_events = run(fine, 30, step_us=7_000)
    for symbol in ("BTC-USDT", "ETH-USDT"):
        assert as_tuples(e for e in coarse_events if e.symbol == symbol) == \
            as_tuples(e for e in fine_events if e.symbol == symbol)


def test_fair_price_is_shared_across_venues_but_order_flow_is_not():
    binance = MarketSimulator([BTC], seed=5, start_us=START_US, venue="binance")
    okx = MarketSimulator([BTC], seed=5, start_us=START_US, venue="okx")
    events_binance, events_okx = run(binance, 120), run(okx, 120)
    assert binance.fair_price("BTC-USDT") == okx.fair_price("BTC-USDT")
    assert as_tuples(events_binance) != as_tuples(events_okx)
    # Both books follow the shared fair price.
    for sim in (binance, okx):
        mid = sim.book("BTC-USDT").mid_ticks() * 0.01
        assert abs(mid - sim.fair_price("BTC-USDT")) / mid < 0.002


def test_stepping_back_in_time_is_a_no_op():
    sim = MarketSimulator([BTC], seed=1, start_us=START_US)
    sim.step(START_US + 2_000_000)
    assert sim.step(START_US + 1_000_000) == []
    assert sim.now_us == START_US + 2_000_000


# ---------------------------------------------------------------------------
# Book invariants
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [BTC, ETH, SOL], ids=lambda s: s.symbol)
def test_book_invariants_hold_at_every_step(spec):
    sim = MarketSimulator([spec], seed=11, start_us=START_US, rate=300)
    book = sim.book(spec.symbol)
    tick, lot = spec.tick_size, spec.lot_size
    # An independent copy of the book, rebuilt from the events alone.
    mirror = {"bid": {}, "ask": {}}
    for side in ("bid", "ask"):
        for price, size in book.levels(side):
            mirror[side][price] = size
    expected_seq = book.seq
    last_trade_id = None
    now = START_US
    for _ in range(1200):  # 2 minutes at 300 actions/s
        now += 100_000
        events = sim.step(now)
        for i, e in enumerate(events):
            if isinstance(e, LevelChange):
                expected_seq += 1
                assert e.seq == expected_seq, "book changes are numbered without gaps"
                price, size = Decimal(e.price), Decimal(e.size)
                assert e.price == format_units(e.ticks * spec.tick_units, spec.price_decimals)
                assert len(e.price.split(".")[1]) == spec.price_decimals
                assert price > 0 and price % tick == 0
                assert size >= 0 and size % lot == 0 and size.is_finite()
                assert e.was_present == (e.price in mirror[e.side])
                if size == 0:
                    assert e.lots == 0 and e.orders == 0
                    del mirror[e.side][e.price]
                else:
                    assert e.lots > 0 and 1 <= e.orders <= e.lots
                    mirror[e.side][e.price] = e.size
            else:
                assert isinstance(e, MarketTrade)
                assert Decimal(e.size) > 0 and Decimal(e.size) % lot == 0
                assert e.taker_side in ("buy", "sell")
                if last_trade_id is not None:
                    assert e.trade_id == last_trade_id + 1
                last_trade_id = e.trade_id
                # The fill is followed by the resting level's new state at the trade price.
                follow = events[i + 1]
                assert isinstance(follow, LevelChange) and follow.ticks == e.ticks
                assert follow.side == ("ask" if e.taker_side == "buy" else "bid")
        assert not book.is_crossed()
        for side in ("bid", "ask"):
            assert 0 < book.count(side) <= sim.params.max_levels
            assert dict(book.levels(side)) == mirror[side]
    assert last_trade_id is not None


def test_trades_take_liquidity_at_the_top():
    sim = MarketSimulator([ETH], seed=4, start_us=START_US, rate=200)
    book = sim.book("ETH-USDT")
    now = START_US
    trades = 0
    for _ in range(600):
        best_bid, best_ask = book.best("bid"), book.best("ask")
        now += 100_000
        events = sim.step(now)
        first_trade = next((e for e in events if isinstance(e, MarketTrade)), None)
        if first_trade is not None and first_trade is events[0]:
            # The first event of a step sees the book as it was: a taker hits the touch.
            expected = best_ask if first_trade.taker_side == "buy" else best_bid
            assert first_trade.ticks == expected
            trades += 1
    assert trades > 10


def test_levels_stay_bounded_and_memory_flat_over_a_long_run():
    params = MarketParams(target_levels=120, max_levels=150, warmup_actions=1000)
    sim = MarketSimulator([BTC, SOL], seed=9, start_us=START_US, rate=400, params=params)
    run(sim, 300, step_us=500_000)  # warm up the allocator and the books
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        now = sim.now_us
        for _ in range(240):  # two more minutes: ~100k more actions
            now += 500_000
            sim.step(now)
            for symbol in ("BTC-USDT", "SOL-USD"):
                for side in ("bid", "ask"):
                    assert sim.book(symbol).count(side) <= 150
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert growth < 256 * 1024, f"memory grew by {growth} bytes"


def test_books_settle_around_the_target_depth():
    sim = MarketSimulator([BTC], seed=2, start_us=START_US, rate=100)
    counts = []
    now = START_US
    for _ in range(60):
        now += 10_000_000
        sim.step(now)
        counts.append(sim.book("BTC-USDT").count("bid") + sim.book("BTC-USDT").count("ask"))
    target = 2 * sim.params.target_levels
    average = sum(counts) / len(counts)
    assert 0.4 * target < average < 1.6 * target, counts


# ---------------------------------------------------------------------------
# Dynamics
# ---------------------------------------------------------------------------


def test_rate_controls_the_number_of_actions_per_symbol():
    fast = SimSymbol("ETH", "USDT", "3000", "0.01", "0.0001", 2, rate=400)
    sim = MarketSimulator([BTC, fast], seed=1, start_us=START_US, rate=200)
    run(sim, 60)
    counts = sim.action_counts()
    # Poisson arrivals: mean rate * 60, standard deviation sqrt(mean).
    assert abs(counts["BTC-USDT"] - 12_000) < 5 * math.sqrt(12_000)
    assert abs(counts["ETH-USDT"] - 24_000) < 5 * math.sqrt(24_000)


def test_taker_side_follows_the_fair_price_drift():
    sim = MarketSimulator([BTC], seed=21, start_us=START_US, rate=100,
                          params=MarketParams(volatility=1.5))
    agree = disagree = 0
    now = START_US
    fair = sim.fair_price("BTC-USDT")
    for _ in range(300):
        buys = sells = 0
        for _ in range(10):
            now += 100_000
            for e in sim.step(now):
                if isinstance(e, MarketTrade):
                    size = float(e.size)
                    if e.taker_side == "buy":
                        buys += size
                    else:
                        sells += size
        new_fair = sim.fair_price("BTC-USDT")
        if buys != sells and new_fair != fair:
            if (new_fair > fair) == (buys > sells):
                agree += 1
            else:
                disagree += 1
        fair = new_fair
    assert agree > 2 * disagree, (agree, disagree)


def test_activity_concentrates_near_the_top_of_the_book():
    sim = MarketSimulator([BTC], seed=13, start_us=START_US, rate=200)
    book = sim.book("BTC-USDT")
    near = far = 0
    now = START_US
    for _ in range(600):
        now += 100_000
        for e in sim.step(now):
            if isinstance(e, LevelChange) and e.lots:
                best = book.best(e.side)
                worst = book.top(e.side)[-1][0]
                span = abs(worst - best) or 1
                if abs(e.ticks - best) <= 0.1 * span:
                    near += 1
                else:
                    far += 1
    # The best tenth of each side's price range gets most of the activity.
    assert near > far


def test_spread_widens_now_and_then():
    sim = MarketSimulator([SOL], seed=3, start_us=START_US, rate=200)
    book = sim.book("SOL-USD")
    spreads = []
    now = START_US
    for _ in range(3000):
        now += 100_000
        sim.step(now)
        spreads.append(book.best("ask") - book.best("bid"))
    spreads.sort()
    median, widest = spreads[len(spreads) // 2], spreads[-1]
    assert min(spreads) >= 1
    assert widest >= 3 * max(1, median)


# ---------------------------------------------------------------------------
# Configuration errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tick_size": "0.001"}, "more decimals"),
        ({"lot_size": "-1"}, "positive"),
        ({"start_price": "nan"}, "positive"),
        ({"start_price": "0.5"}, "at least 100 ticks"),
        ({"base": "btc"}, "upper-case"),
        ({"price_decimals": 30}, "0 to 18"),
        ({"rate": 0}, "positive"),
    ],
)
def test_invalid_symbols_are_rejected_with_a_reason(kwargs, message):
    fields = {"base": "BTC", "quote": "USDT", "start_price": "60000", "tick_size": "0.01",
              "lot_size": "0.00001", "price_decimals": 2}
    fields.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        SimSymbol(**fields)


def test_simulator_configuration_errors():
    with pytest.raises(ConfigError, match="duplicate"):
        MarketSimulator([BTC, BTC])
    with pytest.raises(ConfigError, match="at least one"):
        MarketSimulator([])
    with pytest.raises(ConfigError, match="rate"):
        MarketSimulator([BTC], rate=float("inf"))
    with pytest.raises(ConfigError):
        MarketParams(min_levels=500, target_levels=400)
    with pytest.raises(InvalidSymbolError, match="ADA-USDT"):
        MarketSimulator([BTC], start_us=START_US).book("ADA-USDT")


def test_size_decimals_default_to_the_lot_size():
    assert SimSymbol("BTC", "USDT", "60000", "0.01", "0.00001", 2).size_decimals == 5
    assert SimSymbol("BTC", "USDT", "60000", "0.01", "1E-8", 2).size_decimals == 8
    assert SimSymbol("X", "USD", "1000", "1", "10", 0).size_decimals == 0
