"""No tick lost: PostgreSQL outages and a SIGKILLed streamer, against real servers.

The reference for "every tick received" is the journal itself: a fresh
processor re-derives from it the rows the streamer must have stored, and
PostgreSQL must hold each of them exactly once.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from streamer.app import Streamer, journal_dir
from streamer.contract import BOOK_UPDATES, TRADES
from streamer.embedded import export_env
from streamer.exchanges.registry import get_mapper
from streamer.feed import FeedConfig
from streamer.journal.log import Journal
from streamer.journal.records import Kind
from streamer.processor import FeedProcessor
from streamer.simulator.backend import run_simulated_exchanges

REPO_ROOT = Path(__file__).resolve().parent.parent
SYMBOLS = {"binance": ["BTC-USDT", "ETH-USDT"], "okx": ["BTC-USDT", "ETH-USDT"]}


def journal_rows(directory: Path, exchange: str, symbols: list[str] | None = None) -> dict[str, Counter]:
    """Rows a processor derives from what is left of a feed's journal, per table,
    as comparable keys: from a fresh processor when the journal starts at a
    connect, from the pickled one when reclaiming left a STATE record first."""
    mapper = get_mapper(exchange)
    natives = [mapper.native_symbol(s) for s in (symbols or SYMBOLS[exchange])]
    processor = None
    after = -1  # rows at or before a starting STATE record belong to reclaimed records
    derived = {"trades": Counter(), "book_updates": Counter()}
    for record in Journal(directory).read():
        if processor is None:
            if record.kind is Kind.STATE:
                processor = pickle.loads(record.payload)
                after = record.local_ts
                continue
            if record.kind is not Kind.CONNECT:
                continue  # before the first base: its rows are stored, its segment not yet reclaimed
            processor = FeedProcessor(exchange, get_mapper(exchange), natives)
        out = processor.process(record)
        for row in out.rows.get(TRADES, []):
            if row[0] > after:
                derived["trades"][_trade_key(row)] += 1
        for row in out.rows.get(BOOK_UPDATES, []):
            if row[0] > after:
                derived["book_updates"][_update_key(row)] += 1
    return derived


def _trade_key(row) -> tuple:
    names = TRADES.column_names
    return (row[names.index("exchange")], row[names.index("symbol")], row[names.index("trade_id")])


def _update_key(row) -> tuple:
    names = BOOK_UPDATES.column_names
    return tuple(row[names.index(c)] for c in ("local_ts", "exchange", "symbol", "side", "price", "size", "seq"))


def stored_rows(url: str, schema: str, exchange: str, until_us: int | None = None,
                since_us: int | None = None) -> dict[str, Counter]:
    limit = sql.SQL("") if until_us is None else sql.SQL(
        " AND local_ts <= timestamptz 'epoch' + {} * interval '1 microsecond'").format(sql.Literal(until_us))
    if since_us is not None:
        limit += sql.SQL(" AND local_ts >= timestamptz 'epoch' + {} * interval '1 microsecond'").format(
            sql.Literal(since_us))
    with psycopg.connect(url, autocommit=True) as conn:
        trades = conn.execute(sql.SQL("SELECT exchange, symbol, trade_id FROM {}.trades WHERE exchange = %s").format(
            sql.Identifier(schema)) + limit, (exchange,)).fetchall()
        updates = conn.execute(sql.SQL(
            "SELECT (extract(epoch FROM local_ts) * 1000000)::bigint, exchange, symbol, side, price, size, seq "
            "FROM {}.book_updates WHERE exchange = %s").format(sql.Identifier(schema)) + limit, (exchange,)).fetchall()
    return {"trades": Counter(map(tuple, trades)), "book_updates": Counter(map(tuple, updates))}


async def _wait_for(predicate, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("state_interval", [60.0, 0.5], ids=["from-connect", "from-state"])
async def test_postgres_down_spills_to_the_journal_and_drains_in_order(settings, tmp_path, state_interval):
    from streamer.faultsuite.servers import PostgresProcess

    pg = PostgresProcess(tmp_path / "pg")
    await asyncio.to_thread(pg.start)
    try:
        own = settings.with_db(host="127.0.0.1", port=pg.port, name=pg.database, user="postgres", schema="coby")
        # A small memory bound, so that the outage overflows it and spills.
        own = replace(own, data_buffer_size=50, batch_write_size=50, data_dir=tmp_path / "data",
                      spool_budget_mb=4 if state_interval < 1 else 1024)
        async with run_simulated_exchanges(list(SYMBOLS), SYMBOLS, rate=80) as urls:
            streamer = Streamer(own, [FeedConfig(e, SYMBOLS[e], urls[e]) for e in SYMBOLS])
            await streamer.start()
            for feed in streamer.feeds:
                # Frequent STATE records: recovery then starts from a pickled
                # processor rather than from the connect.
                feed.durability.state_interval = state_interval
            try:
                await asyncio.sleep(2.0)
                await asyncio.to_thread(pg.stop)
                await asyncio.sleep(4.0)  # the feeds keep receiving; rows spill to the journal
                assert streamer.pg.stats()["spilled_streams"], "the outage should have spilled the streams"
                frames_during_outage = sum(f.stats.frames for f in streamer.feeds)
                await asyncio.to_thread(pg.start)
                await _wait_for(lambda: not streamer.pg.stats()["spilled_streams"], timeout=60)
                for feed in streamer.feeds:
                    # No more STATE records: the journal kept at the end (from its last
                    # base) then spans at least the second below, books and trades, and
                    # not only the few frames after a STATE written just before the stop.
                    feed.durability.state_interval = 60.0
                await asyncio.sleep(1.0)
                assert sum(f.stats.frames for f in streamer.feeds) > frames_during_outage
            finally:
                await streamer.stop()
        assert all(f.durability.recoveries >= 1 for f in streamer.feeds)
        if state_interval < 1:
            assert all(f.durability.bases[0] > 1 for f in streamer.feeds), "segments before a STATE were reclaimed"
        for exchange in SYMBOLS:
            journal = journal_dir(own, exchange)
            expected = journal_rows(journal, exchange)
            # Older records were reclaimed (their rows are stored): compare from the first base.
            first = next(r for r in Journal(journal).read() if r.kind in (Kind.CONNECT, Kind.STATE))
            since = first.local_ts + 1 if first.kind is Kind.STATE else first.local_ts
            stored = stored_rows(pg.url(), "coby", exchange, since_us=since)
            assert expected["trades"] and expected["book_updates"]
            assert stored["trades"] == expected["trades"], exchange  # every tick once, none twice
            assert stored["book_updates"] == expected["book_updates"], exchange
    finally:
        await asyncio.to_thread(pg.stop)


def _simulator(tmp_path: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "simulate", "--exchanges", ",".join(SYMBOLS), "--duration", "120",
         "--rate", "80"],
        cwd=REPO_ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    env: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while len(env) < 2 * len(SYMBOLS) and time.monotonic() < deadline:
        line = proc.stderr.readline()
        match = re.match(r"(\w+): ws=(\S+) rest=(\S+)", line)
        if match:
            env[f"COBY_{match[1].upper()}_WS_URL"] = match[2]
            env[f"COBY_{match[1].upper()}_REST_URL"] = match[3]
    assert len(env) == 2 * len(SYMBOLS), "simulator did not start"
    return proc, env


def _stream(env: dict[str, str], duration: float) -> subprocess.Popen:
    specs = [f"{e}:{','.join(s)}" for e, s in SYMBOLS.items()]
    return subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "stream", *specs, "--duration", str(duration)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


@pytest.mark.timeout(180)
def test_sigkill_then_restart_stores_every_received_tick_exactly_once(settings, tmp_path):
    simulator, urls = _simulator(tmp_path)
    try:
        data_dir = tmp_path / "data"
        env = {**os.environ, **export_env(settings), **urls, "COBY_DATA_DIR": str(data_dir)}
        first = _stream(env, 120)
        url, schema = settings.db.url(), settings.db.schema
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if sum(stored_rows(url, schema, e)["trades"].total() for e in SYMBOLS) > 50:
                    break
            except psycopg.errors.UndefinedTable:
                pass
            time.sleep(0.5)
        time.sleep(1.0)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        # What the killed process had received: its journals, as they were at the kill.
        received = tmp_path / "received"
        shutil.copytree(journal_dir(replace(settings, data_dir=data_dir), "okx").parent, received)

        second = _stream(env, 6)
        assert second.wait(timeout=90) == 0
    finally:
        simulator.terminate()
        simulator.wait(timeout=30)

    for exchange in SYMBOLS:
        expected = journal_rows(received / exchange, exchange)
        last_received = max(r.local_ts for r in Journal(received / exchange).read())
        stored_before_kill = stored_rows(url, schema, exchange, until_us=last_received)
        assert expected["trades"].total() > 0
        assert stored_before_kill["trades"] == expected["trades"], exchange
        assert stored_before_kill["book_updates"] == expected["book_updates"], exchange
        everything = stored_rows(url, schema, exchange)
        assert max(everything["trades"].values()) == 1  # no trade stored twice across the restart
    with psycopg.connect(url, autocommit=True) as conn:
        details = [r[0] for r in conn.execute(sql.SQL(
            "SELECT detail FROM {}.feed_events WHERE event = 'disconnected'").format(sql.Identifier(schema))).fetchall()]
    assert sum("stopped unexpectedly" in d for d in details) == len(SYMBOLS)


async def test_spool_budget_raises_the_alarm_pauses_and_recovers(settings, tmp_path):
    from streamer.faultsuite.servers import PostgresProcess

    pg = PostgresProcess(tmp_path / "pg")
    await asyncio.to_thread(pg.start)
    try:
        own = settings.with_db(host="127.0.0.1", port=pg.port, name=pg.database, user="postgres", schema="coby")
        own = replace(own, data_buffer_size=50, batch_write_size=50, data_dir=tmp_path / "data", spool_budget_mb=1)
        async with run_simulated_exchanges(["okx"], {"okx": SYMBOLS["okx"]}, rate=400) as urls:
            streamer = Streamer(own, [FeedConfig("okx", SYMBOLS["okx"], urls["okx"])])
            await streamer.start()
            feed = streamer.feeds[0]
            try:
                await asyncio.sleep(1.0)
                await asyncio.to_thread(pg.stop)
                # The journal fills up to the budget: alarm first, then reception pauses.
                await _wait_for(lambda: feed.durability.journal.total_bytes >= feed.durability.budget_bytes, 60)
                assert feed.durability.alarm
                assert "spool alarm" in feed.status.detail
                paused_at = feed.stats.frames
                await asyncio.sleep(1.0)
                assert feed.stats.frames == paused_at, "reception should pause while the journal is full"
                await asyncio.to_thread(pg.start)
                # PostgreSQL drains the journal, segments are reclaimed, reception resumes.
                await _wait_for(lambda: feed.stats.frames > paused_at + 50, 60)
                await _wait_for(lambda: not streamer.pg.stats()["spilled_streams"], 60)
                assert feed.durability.journal.total_bytes < feed.durability.budget_bytes
            finally:
                await streamer.stop()
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            details = [r[0] for r in conn.execute(
                "SELECT detail FROM coby.feed_events WHERE exchange = 'okx' AND event = 'error'").fetchall()]
        assert any(d.startswith("spool alarm") for d in details)
        journal = journal_dir(own, "okx")
        first = next(r for r in Journal(journal).read() if r.kind in (Kind.CONNECT, Kind.STATE))
        since = first.local_ts + 1 if first.kind is Kind.STATE else first.local_ts
        expected = journal_rows(journal, "okx")
        stored = stored_rows(pg.url(), "coby", "okx", since_us=since)
        assert stored["trades"] == expected["trades"]
        assert stored["book_updates"] == expected["book_updates"]
    finally:
        await asyncio.to_thread(pg.stop)
