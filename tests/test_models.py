"""The seed's model API: books, buckets, connection status."""

from datetime import datetime, timezone
from decimal import Decimal

from streamer.models import (
    ConnectionState,
    ConnectionStatus,
    OrderBookSnapshot,
    PriceBuckets,
    PriceLevel,
)


def _snapshot(bids, asks) -> OrderBookSnapshot:
    return OrderBookSnapshot(
        "binance", "BTC-USDT", datetime(2026, 1, 1, tzinfo=timezone.utc),
        tuple(PriceLevel.from_strings(p, s) for p, s in bids),
        tuple(PriceLevel.from_strings(p, s) for p, s in asks),
    )


def test_mid_price_and_spread_are_exact_decimals():
    book = _snapshot([("60000.10", "1"), ("59999.90", "2")], [("60000.30", "0.5")])
    assert book.mid_price == Decimal("60000.20")
    assert book.spread == Decimal("0.20")
    assert book.best_bid == PriceLevel(Decimal("60000.10"), Decimal("1"))
    assert not book.is_crossed


def test_one_sided_book_has_no_mid_or_spread():
    book = _snapshot([("1", "1")], [])
    assert book.mid_price is None and book.spread is None and book.best_ask is None


def test_crossed_and_locked_books_are_flagged():
    assert _snapshot([("10", "1")], [("9.5", "1")]).is_crossed
    assert _snapshot([("10", "1")], [("10", "1")]).is_crossed


def test_price_buckets_sum_sizes_by_bucket_floor():
    book = _snapshot([("60009.99", "1"), ("60000.00", "2"), ("59999.99", "4")], [("60010", "3"), ("60019.5", "1")])
    buckets = PriceBuckets.from_snapshot(book, Decimal("10"))
    assert buckets.bid_buckets == {Decimal("60000"): Decimal("3"), Decimal("59990"): Decimal("4")}
    assert buckets.ask_buckets == {Decimal("60010"): Decimal("4")}


def test_connection_status_hash_is_all_strings():
    status = ConnectionStatus("okx", ConnectionState.CONNECTED, since_us=5, last_frame_us=None, reconnects=2)
    data = status.as_redis_hash()
    assert data["state"] == "connected" and data["reconnects"] == "2" and data["last_frame_us"] == ""
    assert all(isinstance(v, str) for v in data.values())
