"""Lost and corrupted frames on a live feed: only the affected symbol resyncs.

The market simulator serves each protocol on 127.0.0.1; a fault plan on the
local exchange server drops or corrupts frames of one symbol (ETH) after its
book has synced. The streamer writes to real PostgreSQL and Redis.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from streamer import commands
from streamer.feed import FeedConfig
from streamer.local.server import FaultPlan
from streamer.simulator.backend import run_simulated_exchanges

SYMBOLS = {
    "binance": ["BTC-USDT", "ETH-USDT", "SOL-USDT"],
    "kraken": ["BTC-USD", "ETH-USD", "SOL-USD"],
    "okx": ["BTC-USDT", "ETH-USDT", "SOL-USDT"],
}
ETH = {"binance": "ETH-USDT", "kraken": "ETH-USD", "okx": "ETH-USDT"}


def is_eth_book_update(protocol: str, frame: str | bytes) -> bool:
    if not isinstance(frame, str):
        return False
    if protocol == "binance":
        return '"depthUpdate"' in frame and '"ETHUSDT"' in frame
    if protocol == "kraken":
        return frame.startswith("[") and '"ETH/USD"' in frame and '"book-' in frame and '"c"' in frame
    return '"books"' in frame and '"ETH-USDT"' in frame and '"update"' in frame


class FaultOnEthUpdates(FaultPlan):
    """After ``skip`` ETH book updates went through, apply ``action`` to the next ``count``."""

    def __init__(self, protocol: str, action: str, *, skip: int = 15, count: int = 1) -> None:
        self.protocol = protocol
        self.action = action
        self.skip = skip
        self.count = count
        self.seen = 0
        self.affected: list[str] = []

    async def ws_frames(self, session, data):
        if not is_eth_book_update(self.protocol, data):
            return (data,)
        self.seen += 1
        if self.seen <= self.skip or len(self.affected) >= self.count:
            return (data,)
        self.affected.append(data)
        if self.action == "drop":
            return ()
        return (data[: len(data) // 2],)  # corrupt: cut the frame in half


def _feed_events(settings, exchange: str) -> list[tuple[str, str]]:
    query = sql.SQL("SELECT symbol, event FROM {}.feed_events WHERE exchange = %s ORDER BY local_ts").format(
        sql.Identifier(settings.db.schema)
    )
    with psycopg.connect(settings.db.url(), autocommit=True) as conn:
        return conn.execute(query, (exchange,)).fetchall()


def _quarantine(settings, exchange: str) -> list[tuple[str, str]]:
    query = sql.SQL("SELECT code, reason FROM {}.quarantine WHERE exchange = %s").format(
        sql.Identifier(settings.db.schema)
    )
    with psycopg.connect(settings.db.url(), autocommit=True) as conn:
        return conn.execute(query, (exchange,)).fetchall()


async def _stream_with_faults(settings, protocol: str, plan: FaultPlan, duration: float) -> dict:
    async with run_simulated_exchanges([protocol], {protocol: SYMBOLS[protocol]}, rate=80) as urls:
        urls.servers[protocol].faults = plan
        feeds = [FeedConfig(protocol, SYMBOLS[protocol], urls[protocol])]
        summary = await commands._run_streamer(settings, feeds, duration=duration)
    return summary[protocol]


def _faulty_frames(protocol: str) -> int:
    """How many ETH updates to break. Kraken's checksum covers only the top 10
    levels, so a lost update deeper in the book goes unnoticed there (by the
    exchange's design): break several so that one surely touches the top."""
    return 5 if protocol == "kraken" else 1


def _assert_only_eth_resynced(protocol: str, events: list[tuple[str, str]]) -> None:
    eth = ETH[protocol]
    lost = {"gap", "checksum_failed"}
    assert any(symbol == eth and event in lost for symbol, event in events), events
    assert not [e for e in events if e[1] in lost and e[0] != eth], "another symbol lost sync"
    assert not [e for e in events if e[1] == "resync" and e[0] != eth], "another symbol was resynced"
    assert any(symbol == eth and event == "resync" for symbol, event in events)
    synced = [symbol for symbol, event in events if event == "synced"]
    # ETH synced again after its resync; every other symbol synced exactly once.
    assert synced.count(eth) >= 2
    for symbol in SYMBOLS[protocol]:
        if symbol != eth:
            assert synced.count(symbol) == 1


@pytest.mark.parametrize("protocol", ["binance", "kraken", "okx"])
async def test_dropped_frame_resyncs_only_that_symbol(protocol, settings):
    plan = FaultOnEthUpdates(protocol, "drop", count=_faulty_frames(protocol))
    summary = await _stream_with_faults(settings, protocol, plan, duration=5.0)

    assert len(plan.affected) == plan.count
    _assert_only_eth_resynced(protocol, _feed_events(settings, protocol))
    if protocol == "kraken":  # no sequence numbers: the checksum catches it
        assert summary["checksum_failed"] >= 1
    else:  # Binance U/u and OKX seqId/prevSeqId chains break first
        assert summary["sequence_gaps"] >= 1
    # Every book, ETH included, is synced again at the end.
    assert set(summary["books"]) == set(SYMBOLS[protocol])
    assert summary["rejected"] == 0


@pytest.mark.parametrize("protocol", ["binance", "kraken", "okx"])
async def test_corrupted_frame_is_quarantined_and_stream_goes_on(protocol, settings):
    plan = FaultOnEthUpdates(protocol, "corrupt", count=_faulty_frames(protocol))
    summary = await _stream_with_faults(settings, protocol, plan, duration=4.0)

    quarantined = _quarantine(settings, protocol)
    assert len(quarantined) == plan.count == summary["rejected"]
    assert all(code == "MAP-002" and "JSON" in reason for code, reason in quarantined)
    # The corrupted frame's update is lost, so ETH resyncs; the others go on.
    _assert_only_eth_resynced(protocol, _feed_events(settings, protocol))
    assert set(summary["books"]) == set(SYMBOLS[protocol])
    assert summary["frames"] > plan.seen
