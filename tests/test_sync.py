"""BookSync: the generic state machine with synthetic messages and each exchange's rules."""

from __future__ import annotations

import pytest

from streamer.book.orderbook import OrderBook
from streamer.book.sync import BookSync, Link, SyncRules, SyncState
from streamer.exchanges.binance.mapper import BinanceSyncRules
from streamer.exchanges.kraken.mapper import KrakenSyncRules
from streamer.exchanges.okx.mapper import OkxSyncRules
from streamer.models import BookMessage, FeedEventKind

_ts = iter(range(1_000_000, 10**12))


def msg(bids=(), asks=(), *, snapshot=False, seq=None, prev=None, first=None, checksum=None, symbol="BTC-USDT"):
    return BookMessage(
        "test", symbol, symbol.replace("-", ""), list(bids), list(asks), next(_ts),
        None, snapshot, seq, prev, first, checksum,
    )


def binance_delta(first, last, bids=(), asks=()):
    return msg(bids, asks, seq=last, prev=first - 1, first=first)


def kinds(outcome):
    return [e.kind for e in outcome.events]


class CountingChecksum(SyncRules):
    """A checksum anyone can compute by hand: levels on both sides plus 1000 x best bid."""

    def checksum(self, book: OrderBook) -> int:
        best = book.best_bid()
        return len(book) + (1000 * int(float(best[0])) if best else 0)


# -- generic behaviour ------------------------------------------------------------


def test_in_band_snapshot_syncs_and_deltas_before_it_are_not_applied():
    sync = BookSync("test", "BTC-USDT", "BTCUSDT", SyncRules())
    early = sync.on_message(msg([("1", "1")]))
    assert early.applied == [] and not sync.is_synced and sync.dropped_unsynced == 1

    snap = msg([("10", "1"), ("9", "2")], [("11", "1")], snapshot=True)
    out = sync.on_message(snap)
    assert sync.state is SyncState.SYNCED
    assert out.applied == [snap] and out.book_changed and not out.needs_resync
    assert kinds(out) == [FeedEventKind.SYNCED]
    assert sync.book.top("bid", 5) == [("10", "1"), ("9", "2")]

    delta = msg([("10", "0")], [("10.5", "3")])
    out = sync.on_message(delta)
    assert out.applied == [delta] and kinds(out) == []
    assert sync.book.best_bid() == ("9", "2") and sync.book.best_ask() == ("10.5", "3")
    assert sync.applied_messages == 2


def test_checksum_failure_clears_only_the_book_and_requests_a_resync():
    sync = BookSync("test", "BTC-USDT", "BTCUSDT", CountingChecksum())
    # book: bids 10, 9; asks 11 -> 3 levels + 10000
    out = sync.on_message(msg([("10", "1"), ("9", "1")], [("11", "1")], snapshot=True, checksum=10003))
    assert sync.is_synced and sync.checksum_ok == 1
    ok = msg([], [("12", "1")], checksum=10004)
    assert sync.on_message(ok).applied == [ok] and sync.checksum_ok == 2
    # Checksum 0 (OKX today) and None are not verified.
    assert sync.on_message(msg([("8", "1")], checksum=0)).applied
    assert sync.on_message(msg([("7", "1")])).applied
    assert sync.checksum_ok == 2

    bad = msg([("6", "1")], checksum=1)
    out = sync.on_message(bad)
    assert kinds(out) == [FeedEventKind.CHECKSUM_FAILED, FeedEventKind.RESYNC]
    assert out.needs_resync and out.book_changed and out.applied == []
    assert not sync.is_synced and len(sync.book) == 0
    assert (sync.checksum_failed, sync.resyncs) == (1, 1)
    assert "exchange 1" in out.events[0].detail and out.events[0].symbol == "BTC-USDT"

    # Deltas of the old subscription are ignored until the new snapshot arrives.
    assert sync.on_message(msg([("5", "1")], checksum=5)).applied == []
    out = sync.on_message(msg([("20", "1")], [("21", "1")], snapshot=True, checksum=20002))
    assert sync.is_synced and kinds(out) == [FeedEventKind.SYNCED]
    assert sync.book.top("bid", 5) == [("20", "1")]


def test_crossed_book_is_recorded_once_per_episode_without_resync():
    sync = BookSync("test", "BTC-USDT", "BTCUSDT", SyncRules())
    sync.on_message(msg([("10", "1")], [("11", "1")], snapshot=True))
    out = sync.on_message(msg([("11", "2")]))
    assert kinds(out) == [FeedEventKind.CROSSED] and not out.needs_resync
    assert "best bid 11 >= best ask 11" in out.events[0].detail
    assert kinds(sync.on_message(msg([("11.5", "2")]))) == []  # still the same episode
    sync.on_message(msg([("11", "0"), ("11.5", "0")]))  # uncrossed
    assert kinds(sync.on_message(msg([("12", "1")]))) == [FeedEventKind.CROSSED]
    assert sync.crossed == 2 and sync.is_synced and sync.book.best_bid() == ("12", "1")


def test_crossed_book_can_force_a_resync():
    class Strict(SyncRules):
        resync_on_crossed = True

    sync = BookSync("test", "BTC-USDT", "BTCUSDT", Strict())
    sync.on_message(msg([("10", "1")], [("11", "1")], snapshot=True))
    out = sync.on_message(msg([("12", "1")]))
    assert kinds(out) == [FeedEventKind.CROSSED, FeedEventKind.RESYNC]
    assert out.needs_resync and not sync.is_synced


def test_depth_limit_truncates_and_reports_removed_levels_as_deletions():
    sync = BookSync("test", "BTC-USDT", "BTCUSDT", KrakenSyncRules(2))
    snap = msg([("10", "1"), ("9", "1"), ("8", "1")], [("11", "1")], snapshot=True)
    out = sync.on_message(snap)
    assert out.applied[0].bids == [("10", "1"), ("9", "1")]  # what the book kept
    assert sync.book.top("bid", 5) == [("10", "1"), ("9", "1")]
    out = sync.on_message(msg([("10.5", "2")]))
    assert out.applied[0].bids == [("10.5", "2"), ("9", "0")]
    assert sync.book.top("bid", 5) == [("10.5", "2"), ("10", "1")]


def test_applied_messages_carry_their_levels_floats_and_rows_match_either_way():
    from streamer.sinks.rows import book_update_rows

    sync = BookSync("test", "BTC-USDT", "BTCUSDT", KrakenSyncRules(2))
    long_bids = [(f"{100 - i}.{i:02d}", f"0.{i + 1}0") for i in range(15)]  # column-wise in the book
    snap = msg(long_bids, [("101.5", "2.000")], snapshot=True)
    delta = msg([("100.5", "1.5")], [("101.5", "0")])
    for message in (snap, delta):
        out = sync.on_message(message)
        (applied,) = out.applied
        # A truncating limit: the stored levels differ from those applied, so no floats travel.
        assert applied.level_values is None and applied is not message
    sync = BookSync("test", "BTC-USDT", "BTCUSDT", SyncRules())
    for message in (msg(long_bids, [("101.5", "2.000")], snapshot=True), msg([("100.5", "1.5")], [("101.5", "0")])):
        (applied,) = sync.on_message(message).applied
        assert applied.level_values == tuple(
            ([float(p) for p, _ in side], [float(s) for _, s in side]) for side in (applied.bids, applied.asks))
        stored = book_update_rows(applied)
        applied.level_values = None
        assert stored == book_update_rows(applied)  # the same rows as converting every level


def test_reset_and_snapshot_failure_report_events():
    sync = BookSync("test", "BTC-USDT", "BTCUSDT", BinanceSyncRules())
    sync.on_message(binance_delta(5, 6))
    assert sync.buffered == 1
    events = sync.on_snapshot_failed("HTTP 503", 123)
    assert [e.kind for e in events] == [FeedEventKind.ERROR] and "HTTP 503" in events[0].detail
    assert sync.snapshot_failures == 1 and sync.buffered == 1
    assert sync.reset("new connection", 124, record=False) == []
    assert sync.buffered == 0 and sync.resyncs == 0
    events = sync.reset("reconnect", 125)
    assert [e.kind for e in events] == [FeedEventKind.RESYNC] and sync.resyncs == 1


def test_invalid_levels_in_a_message_do_not_crash():
    sync = BookSync("test", "BTC-USDT", "BTCUSDT", SyncRules())
    sync.on_message(msg([("10", "1")], snapshot=True))
    out = sync.on_message(msg([("nan", "1")]))
    assert kinds(out) == [FeedEventKind.ERROR, FeedEventKind.RESYNC] and out.needs_resync
    assert sync.invalid == 1 and not sync.is_synced


def test_max_buffer_must_be_positive():
    with pytest.raises(ValueError):
        BookSync("test", "BTC-USDT", "BTCUSDT", SyncRules(), max_buffer=0)


# -- Binance alignment ------------------------------------------------------------


def test_binance_buffers_until_the_rest_snapshot_then_bridges():
    sync = BookSync("binance", "BTC-USDT", "BTCUSDT", BinanceSyncRules())
    d1 = binance_delta(90, 95, [("1", "1")])  # u <= L: stale
    d2 = binance_delta(96, 101, [("2", "1")])  # U <= L+1 <= u: bridges
    d3 = binance_delta(102, 104, [("3", "1")])  # continues
    for d in (d1, d2, d3):
        out = sync.on_message(d)
        assert out.applied == [] and not sync.is_synced
    assert sync.buffered == 3

    snap = msg([("0.5", "1")], [("9", "1")], snapshot=True, seq=100)
    out = sync.on_message(snap)
    assert out.applied == [snap, d2, d3]
    assert kinds(out) == [FeedEventKind.SYNCED]
    assert sync.last_seq == 104 and sync.dropped_stale == 1 and sync.buffered == 0
    assert [p for p, _ in sync.book.levels("bid")] == ["3", "2", "0.5"]

    # A duplicate of an applied event is stale; the next one must start at 105.
    assert sync.on_message(binance_delta(102, 104)).applied == []
    assert sync.dropped_stale == 2
    d4 = binance_delta(105, 105, [("3", "0")])
    assert sync.on_message(d4).applied == [d4]


def test_binance_gap_buffers_the_revealing_delta_for_the_next_snapshot():
    sync = BookSync("binance", "BTC-USDT", "BTCUSDT", BinanceSyncRules())
    sync.on_message(msg([("1", "1")], [("9", "1")], snapshot=True, seq=10))
    sync.on_message(binance_delta(11, 12))
    gap = binance_delta(14, 15, [("2", "1")])  # 13 is missing
    out = sync.on_message(gap)
    assert kinds(out) == [FeedEventKind.GAP, FeedEventKind.RESYNC] and out.needs_resync
    assert "last seq 12" in out.events[0].detail and "first_seq 14" in out.events[0].detail
    assert sync.gaps == 1 and not sync.is_synced and len(sync.book) == 0 and sync.buffered == 1

    later = binance_delta(16, 16, [("3", "1")])
    sync.on_message(later)
    out = sync.on_message(msg([("1", "1")], [("9", "1")], snapshot=True, seq=14))
    assert out.applied[1:] == [gap, later] and sync.is_synced and sync.last_seq == 16


def test_binance_first_delta_that_does_not_bridge_is_a_gap():
    sync = BookSync("binance", "BTC-USDT", "BTCUSDT", BinanceSyncRules())
    sync.on_message(binance_delta(105, 110))
    out = sync.on_message(msg([("1", "1")], snapshot=True, seq=100))  # needs U <= 101
    assert kinds(out) == [FeedEventKind.SYNCED, FeedEventKind.GAP, FeedEventKind.RESYNC]
    assert out.needs_resync and not sync.is_synced and sync.buffered == 1


def test_binance_old_rest_snapshot_does_not_replace_a_newer_book():
    sync = BookSync("binance", "BTC-USDT", "BTCUSDT", BinanceSyncRules())
    sync.on_message(msg([("1", "1")], snapshot=True, seq=10))
    sync.on_message(binance_delta(11, 20, [("2", "1")]))
    out = sync.on_message(msg([("5", "5")], snapshot=True, seq=15))
    assert out.applied == [] and sync.book.best_bid() == ("2", "1") and sync.dropped_stale == 1


def test_binance_buffer_overflow_is_a_gap_and_memory_stays_bounded():
    sync = BookSync("binance", "BTC-USDT", "BTCUSDT", BinanceSyncRules(), max_buffer=3)
    outcomes = [sync.on_message(binance_delta(i, i)) for i in range(1, 5)]
    assert [o.needs_resync for o in outcomes] == [False, False, False, True]
    assert kinds(outcomes[-1]) == [FeedEventKind.GAP] and "3 deltas dropped" in outcomes[-1].events[0].detail
    assert sync.buffered == 1 and sync.buffer_overflows == 1 and sync.gaps == 1


# -- OKX seqId chain --------------------------------------------------------------


def test_okx_chain_accepts_links_no_change_and_reset_and_detects_breaks():
    sync = BookSync("okx", "BTC-USDT", "BTC-USDT", OkxSyncRules())
    sync.on_message(msg([("10", "1")], [("11", "1")], snapshot=True, seq=100, prev=-1, checksum=0))
    for m in (
        msg([("10", "2")], seq=105, prev=100, checksum=0),
        msg(seq=105, prev=105, checksum=0),  # no change since 105
        msg([("10", "3")], seq=3, prev=105, checksum=0),  # sequence reset by maintenance
        msg([("10", "4")], seq=9, prev=3, checksum=0),
    ):
        out = sync.on_message(m)
        assert out.applied == [m] and not out.needs_resync
    assert sync.last_seq == 9 and sync.book.best_bid() == ("10", "4")

    out = sync.on_message(msg([("10", "5")], seq=20, prev=15, checksum=0))
    assert kinds(out) == [FeedEventKind.GAP, FeedEventKind.RESYNC] and out.needs_resync
    assert sync.buffered == 0  # in-band exchanges resubscribe instead of buffering
    assert sync.checksum_ok == 0 and sync.checksum_failed == 0


def test_okx_frames_without_seq_ids_rely_on_the_checksum_only():
    rules = OkxSyncRules()
    no_seq = msg([("1", "1")])
    assert rules.next_delta(None, no_seq) is Link.APPLY
    assert rules.next_delta(5, no_seq) is Link.APPLY
    assert rules.first_after_snapshot(5, msg(seq=7, prev=5)) is Link.APPLY
    assert rules.first_after_snapshot(5, msg(seq=7, prev=6)) is Link.GAP
