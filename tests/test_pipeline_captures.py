"""Recorded exchange sessions end to end: capture replay -> PostgreSQL -> every asset."""

from __future__ import annotations

import argparse
import asyncio
from datetime import timedelta

import dagster as dg
import polars as pl
import pytest
from psycopg import sql

from coby_pipeline.lib import datasets
from coby_pipeline.lib.hours import HOUR_KEY_FORMAT, HourWindow
from coby_pipeline.materialize import materialize_hours
from streamer import commands

from .pipeline_data import datasets_root, pipeline_env  # noqa: F401  (fixture)
from .reference_books import CAPTURE_FILES

pytestmark = pytest.mark.captures


def _hours(conn, schema: str) -> list[str]:
    low, high = conn.execute(
        sql.SQL(
            "SELECT min(local_ts), max(local_ts) FROM ("
            " SELECT local_ts FROM {s}.book_updates UNION ALL SELECT local_ts FROM {s}.trades"
            " UNION ALL SELECT local_ts FROM {s}.book_snapshots) t"
        ).format(s=sql.Identifier(schema))
    ).fetchone()
    keys, hour = [], low.replace(minute=0, second=0, microsecond=0)
    while hour <= high:
        keys.append(hour.strftime(HOUR_KEY_FORMAT))
        hour += timedelta(hours=1)
    return keys


@pytest.mark.parametrize("protocol", ["binance", "kraken", "okx"])
def test_recorded_session_through_the_pipeline(
    protocol, settings, pg_conn, captures_dir, datasets_root, monkeypatch
):
    args = argparse.Namespace(file=str(captures_dir / CAPTURE_FILES[protocol]), exchange=None, speed=None, timeout=120.0)
    # Dagster runs outside the replay's event loop (it manages its own).
    replayed = asyncio.run(commands.capture_replay(args, settings))
    assert not replayed["timed_out"] and replayed["trades"] + replayed["book_updates"] > 0
    for name, value in pipeline_env(settings, datasets_root).items():
        monkeypatch.setenv(name, value)

    schema = sql.Identifier(settings.db.schema)
    keys = _hours(pg_conn, settings.db.schema)
    summary = materialize_hours(keys, instance=dg.DagsterInstance.ephemeral())
    assert summary["success"], summary["runs"]

    # Every stored tick is in the replay dataset.
    for kind in ("book_updates", "book_snapshots", "trades"):
        stored = pg_conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(schema, sql.Identifier(kind))).fetchone()[0]
        assert summary["rows"][f"replay_{kind}"] == stored, kind

    buckets = pl.concat(
        [pl.read_parquet(datasets.hour_table(datasets_root, datasets.PRICE_BUCKETS, HourWindow.from_key(k))) for k in keys]
    )
    # Traded volume per side, and resting size of the last snapshot of each second, as PostgreSQL sums them.
    traded = dict(
        pg_conn.execute(sql.SQL("SELECT side, sum(size) FROM {}.trades GROUP BY side").format(schema)).fetchall()
    )
    assert buckets["buy_volume"].sum() == pytest.approx(traded.get("buy", 0.0), rel=1e-9)
    assert buckets["sell_volume"].sum() == pytest.approx(traded.get("sell", 0.0), rel=1e-9)
    resting = dict(
        pg_conn.execute(
            sql.SQL(
                "SELECT side, sum(size) FROM {s}.book_snapshots b WHERE local_ts = ("
                " SELECT max(local_ts) FROM {s}.book_snapshots l WHERE l.exchange = b.exchange AND l.symbol = b.symbol"
                " AND date_trunc('second', l.local_ts) = date_trunc('second', b.local_ts)) GROUP BY side"
            ).format(s=schema)
        ).fetchall()
    )
    assert buckets["bid_size"].sum() == pytest.approx(resting.get("bid", 0.0), rel=1e-9)
    assert buckets["ask_size"].sum() == pytest.approx(resting.get("ask", 0.0), rel=1e-9)

    quality = pl.concat(
        [pl.read_parquet(datasets.hour_table(datasets_root, datasets.QUALITY_SCORES, HourWindow.from_key(k))) for k in keys]
    )
    assert quality["checksum_failed"].sum() == replayed["checksum_failed"] == 0
    assert quality["gaps"].sum() == replayed["sequence_gaps"] == 0
    assert quality["crossed_books"].sum() == 0
    assert summary["checks"]["quality_scores:no_crossed_books"]["failed"] == 0
