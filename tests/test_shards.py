"""Shards: one exchange's symbols over several connections (streamer.shards)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import orjson
import psycopg
import pytest
import redis
from psycopg import sql

from streamer.app import Streamer, journal_dir
from streamer.commands import feed_configs, parse_stream_specs
from streamer.contract import INGEST_CHECKPOINTS, RedisKeys
from streamer.embedded import export_env
from streamer.errors import ConfigError
from streamer.journal.log import Journal, last_seq
from streamer.journal.records import Kind
from streamer.processes import split_exchanges
from streamer.shards import check_layout, deal, parse_feed_name, plan_feeds
from streamer.simulator.backend import run_simulated_exchanges

from .test_durability import REPO_ROOT, journal_rows, stored_rows

OKX = ["BTC-USDT", "ETH-USDT", "SOL-USDT"]


# -- planning ------------------------------------------------------------------

def test_feed_names_and_dealing():
    assert parse_feed_name("okx") == ("okx", "")
    assert parse_feed_name("okx@12") == ("okx", "12")
    for bad in ("okx@", "okx@0", "okx@x", "okx@1@2", "okx@12345"):
        with pytest.raises(ConfigError):
            parse_feed_name(bad)
    assert deal(["A", "B", "C", "D", "E"], 2) == [["A", "C", "E"], ["B", "D"]]
    with pytest.raises(ConfigError):
        deal(["A"], 2)  # a shard would be empty


def test_more_processes_than_exchanges_split_the_busiest():
    big = [f"S{i}-USDT" for i in range(100)]
    assert plan_feeds({"okx": OKX}, 1) == {"okx": OKX}
    assert plan_feeds({"okx": OKX}, 2) == {"okx@1": ["BTC-USDT", "SOL-USDT"], "okx@2": ["ETH-USDT"]}
    assert plan_feeds({"okx": OKX}, 5) == {"okx@1": ["BTC-USDT"], "okx@2": ["ETH-USDT"], "okx@3": ["SOL-USDT"]}
    planned = plan_feeds({"okx": big, "kraken": ["BTC-USD"] * 10, "binance": ["BTC-USDT"] * 10}, 4)
    assert sorted(planned) == ["binance", "kraken", "okx@1", "okx@2"]
    assert sorted(planned["okx@1"] + planned["okx@2"]) == sorted(big)
    # Specs that name shards are taken as they are.
    assert plan_feeds({"okx@1": ["BTC-USDT"], "okx@2": ["ETH-USDT"]}, 4) == {"okx@1": ["BTC-USDT"],
                                                                            "okx@2": ["ETH-USDT"]}
    groups = split_exchanges(plan_feeds({"okx": OKX}, 2), 2)
    assert sorted(sorted(group) for group in groups) == [["okx@1"], ["okx@2"]]


def test_stream_specs_name_shards_and_refuse_overlaps(settings):
    wanted = parse_stream_specs(["okx@1:BTC-USDT,SOL-USDT", "OKX@2:ETH-USDT", "binance:BTC-USDT"])
    assert wanted == {"okx@1": ["BTC-USDT", "SOL-USDT"], "okx@2": ["ETH-USDT"], "binance": ["BTC-USDT"]}
    configs = {config.name: config for config in feed_configs(wanted, settings)}
    assert (configs["okx@2"].exchange, configs["okx@2"].shard) == ("okx", "2")
    assert configs["binance"].shard == ""
    with pytest.raises(ConfigError, match="both okx@1 and okx@2"):
        parse_stream_specs(["okx@1:BTC-USDT", "okx@2:BTC-USDT"])
    with pytest.raises(ConfigError, match="both whole and as shard"):
        parse_stream_specs(["okx:BTC-USDT", "okx@2:ETH-USDT"])
    with pytest.raises(ConfigError):
        parse_stream_specs(["okx@zero:BTC-USDT"])


# -- journals of another layout ---------------------------------------------------

def _journal_with(directory, records: int) -> None:
    journal = Journal(directory)
    for i in range(records):
        journal.append(1_000 + i, Kind.WS_TEXT, b"{}")
    journal.close()


def _store_checkpoint(settings, stream: str, seq: int) -> None:
    with psycopg.connect(settings.db.url(), autocommit=True) as conn:
        conn.execute(sql.SQL(INGEST_CHECKPOINTS.create_sql(settings.db.schema, partitioned=False)))
        conn.execute(sql.SQL("INSERT INTO {}.{} (stream, seq, updated_at) VALUES (%s, %s, now())").format(
            sql.Identifier(settings.db.schema), sql.Identifier(INGEST_CHECKPOINTS.name)), (stream, seq))


def test_a_layout_that_would_strand_unstored_records_is_refused(settings):
    _journal_with(journal_dir(settings, "okx"), 5)
    assert last_seq(journal_dir(settings, "okx")) == 5
    _journal_with(journal_dir(settings, "kraken"), 3)  # another exchange's journal: not this check's concern
    # No checkpoint at all: the five records were never stored.
    with pytest.raises(ConfigError, match="okx"):
        check_layout(settings, ["okx@1", "okx@2"])
    check_layout(settings, ["okx"])  # the same layout replays them itself
    _store_checkpoint(settings, "okx", 4)
    with pytest.raises(ConfigError, match="okx"):
        check_layout(settings, ["okx@1", "okx@2"])
    with psycopg.connect(settings.db.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("UPDATE {}.{} SET seq = 5").format(
            sql.Identifier(settings.db.schema), sql.Identifier(INGEST_CHECKPOINTS.name)))
    check_layout(settings, ["okx@1", "okx@2"])  # everything stored: the layout may change


def test_one_feed_name_twice_is_refused(settings):
    configs = feed_configs({"okx@1": ["BTC-USDT"]}, settings)
    with pytest.raises(ConfigError, match="twice"):
        Streamer(settings, [*configs, *configs])


# -- two shards streaming ------------------------------------------------------------

@pytest.mark.timeout(120)
async def test_two_shards_of_one_exchange_store_every_tick_once_each_on_its_own(settings, redis_client):
    async with run_simulated_exchanges(["okx"], {"okx": OKX}, rate=80) as urls:
        wanted = {"okx@1": ["BTC-USDT", "SOL-USDT"], "okx@2": ["ETH-USDT"]}
        configs = feed_configs(wanted, settings)
        for config in configs:
            config.endpoints = urls["okx"]
        streamer = Streamer(settings, configs)
        await streamer.start()
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while not all(feed.stats.trades > 3 and all(s.is_synced for s in feed.books.values())
                          for feed in streamer.feeds):
                assert asyncio.get_running_loop().time() < deadline, "shards did not sync"
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
        finally:
            await streamer.stop()
    assert set(streamer.summary()) == {"okx@1", "okx@2"}
    stored = stored_rows(settings.db.url(), settings.db.schema, "okx")
    for name, symbols in wanted.items():
        books = streamer.summary()[name]["books"]
        assert sorted(books) == sorted(symbols)  # each connection carries its own symbols only
        expected = journal_rows(journal_dir(settings, name), "okx", symbols)
        assert expected["book_updates"] and expected["trades"]
        mine = {table: {key: n for key, n in rows.items() if key[2 if table == "book_updates" else 1] in symbols}
                for table, rows in stored.items()}
        assert mine["book_updates"] == expected["book_updates"], name  # every tick once
        assert mine["trades"] == expected["trades"], name
    with psycopg.connect(settings.db.url(), autocommit=True) as conn:
        events = conn.execute(sql.SQL("SELECT symbol, event FROM {}.feed_events WHERE exchange = 'okx' "
                                      "AND event IN ('connected', 'disconnected')").format(
            sql.Identifier(settings.db.schema))).fetchall()
        streams = dict(conn.execute(sql.SQL("SELECT stream, seq FROM {}.{}").format(
            sql.Identifier(settings.db.schema), sql.Identifier(INGEST_CHECKPOINTS.name))).fetchall())
    assert sorted(set(events)) == [("@1", "connected"), ("@1", "disconnected"),
                                   ("@2", "connected"), ("@2", "disconnected")]
    assert {name: streams.get(name) for name in wanted} == {
        name: last_seq(journal_dir(settings, name)) for name in wanted}
    keys = RedisKeys(settings.redis.prefix)
    for name, shard in (("okx@1", "1"), ("okx@2", "2")):
        status = redis_client.hgetall(keys.status(name))
        assert (status["exchange"], status["shard"], status["state"]) == ("okx", shard, "stopped")
    assert not redis_client.exists(keys.status("okx"))
    assert {m.split(":", 1)[1] for m in redis_client.smembers(keys.books)} <= set(OKX)


@pytest.mark.timeout(180)
def test_processes_outnumbering_exchanges_run_one_shard_each(settings, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "simulate", "--exchanges", "okx", "--duration", "120", "--rate", "80"],
        cwd=REPO_ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        urls = {}
        deadline = time.monotonic() + 30
        while len(urls) < 2 and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if line.startswith("okx: ws="):
                ws, rest = line.split()[1:3]
                urls = {"COBY_OKX_WS_URL": ws[3:], "COBY_OKX_REST_URL": rest[5:]}
        assert urls, "simulator did not start"
        env = {**os.environ, **export_env(settings), **urls, "COBY_DATA_DIR": str(tmp_path / "data")}
        out = subprocess.run([sys.executable, "-m", "streamer.cli", "stream", "okx:BTC-USDT,ETH-USDT",
                              "--processes", "2", "--duration", "12"],
                             cwd=REPO_ROOT, env=env, capture_output=True, timeout=150)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    result = orjson.loads(out.stdout.decode().strip().splitlines()[-1])
    assert sorted(p["feeds"][0] for p in result["processes"]) == ["okx@1", "okx@2"]
    assert all(p["exchanges"] == ["okx"] and p["summary"][p["feeds"][0]]["trades"] > 0
               for p in result["processes"])
    stored = stored_rows(settings.db.url(), settings.db.schema, "okx")
    assert {key[1] for key in stored["trades"]} == {"BTC-USDT", "ETH-USDT"}


@pytest.mark.timeout(120)
async def test_after_a_clean_stop_the_layout_may_change(settings):
    """A stop stores everything its journal holds: splitting the exchange next is allowed."""
    async with run_simulated_exchanges(["okx"], {"okx": OKX}, rate=80) as urls:
        configs = feed_configs({"okx": OKX}, settings)
        configs[0].endpoints = urls["okx"]
        streamer = Streamer(settings, configs)
        await streamer.start()
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while streamer.feeds[0].stats.trades < 3:
                assert asyncio.get_running_loop().time() < deadline, "no trades"
                await asyncio.sleep(0.1)
        finally:
            await streamer.stop()
    assert last_seq(journal_dir(settings, "okx")) > 0
    check_layout(settings, ["okx@1", "okx@2"])
