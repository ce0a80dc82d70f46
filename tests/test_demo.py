"""The demo path end to end: simulated exchanges -> streamer -> PostgreSQL/Redis -> Dagster -> Parquet."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import psycopg
import pytest
from psycopg import sql

from streamer import commands
from streamer.contract import RedisKeys
from streamer.embedded import export_env

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_bounded_demo_streams_stores_and_materializes(settings, redis_client):
    args = argparse.Namespace(duration=10.0, no_ui=True, ui_port=0, rate=60.0)
    result = commands.demo(args, settings)

    streamer = result["streamer"]
    assert set(streamer) == {"binance", "kraken", "okx"}
    for exchange, stats in streamer.items():
        assert len(stats["books"]) == 3, exchange
        assert stats["sequence_gaps"] == 0 and stats["checksum_failed"] == 0 and stats["rejected"] == 0
        assert stats["trades"] > 0 and stats["book_updates"] > 0 and stats["snapshots_written"] > 0
    assert streamer["kraken"]["checksum_ok"] > 0 and streamer["okx"]["checksum_ok"] > 0

    # Every table the streamer writes has rows, and the counts are PostgreSQL's own.
    rows = result["rows"]
    for table in ("book_updates", "trades", "book_snapshots", "feed_events", "instruments"):
        assert rows[table] > 0, table
    assert rows["quarantine"] == 0

    # Every asset materialized the covered hours from that data.
    pipeline = result["pipeline"]
    assert pipeline["success"] is True
    assert result["partitions"] == pipeline["partitions"]
    for asset in ("replay_dataset", "price_buckets", "heatmap", "quality_scores"):
        assert pipeline["rows"][asset] > 0, asset
    assert pipeline["rows"]["replay_book_updates"] == rows["book_updates"]
    assert pipeline["rows"]["replay_trades"] == rows["trades"]
    assert all(c["failed"] == 0 for c in pipeline["checks"].values()), pipeline["checks"]

    # The replay dataset loads in DuckDB with the README's query, sorted by time.
    replay = Path(result["replay_dataset"])
    con = duckdb.connect()
    loaded = con.execute(
        "SELECT exchange, symbol, local_ts FROM read_parquet(?, hive_partitioning = true)",
        [str(replay / "book_updates" / "**" / "*.parquet")],
    ).fetchall()
    assert len(loaded) == rows["book_updates"]
    assert {r[0] for r in loaded} == {"binance", "kraken", "okx"}
    per_file = con.execute(
        "SELECT filename, bool_and(ok) FROM (SELECT filename, local_ts >= lag(local_ts, 1, local_ts) "
        "OVER (PARTITION BY filename ORDER BY file_row_number) AS ok "
        "FROM read_parquet(?, filename = true, file_row_number = true)) GROUP BY filename",
        [str(replay / "trades" / "**" / "*.parquet")],
    ).fetchall()
    assert per_file and all(ok for _, ok in per_file)

    # Connection status is in Redis for the orchestrator.
    keys = RedisKeys(settings.redis.prefix)
    for exchange in ("binance", "kraken", "okx"):
        assert redis_client.hget(keys.status(exchange), "state") == "stopped"
        assert int(redis_client.hget(keys.status(exchange), "frames")) > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(240)
def test_demo_command_serves_dagster_ui_and_prints_json_summary(settings, tmp_path):
    port = _free_port()
    env = {**os.environ, **export_env(settings), "COBY_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "demo", "--duration", "45", "--ui-port", str(port)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        ui_answered = False
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and proc.poll() is None and not ui_answered:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as resp:
                    ui_answered = resp.status == 200 and "dagster_webserver_version" in resp.read().decode()
            except OSError:
                time.sleep(1)
        stdout, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert ui_answered, "the Dagster UI never answered on 127.0.0.1 while the demo ran"
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["dagster_ui"] == f"http://127.0.0.1:{port}"
    assert Path(summary["replay_dataset"]).is_dir()
    assert summary["rows"]["book_updates"] > 0
    with psycopg.connect(settings.db.url(), autocommit=True) as conn:
        count = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.trades").format(sql.Identifier(settings.db.schema))
        ).fetchone()[0]
    assert count == summary["rows"]["trades"] > 0
