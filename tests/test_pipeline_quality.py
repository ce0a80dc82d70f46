"""Quality scores and their checks, against values recomputed from the raw rows."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from psycopg import sql

from coby_pipeline.defs.quality.assets import quality_scores
from coby_pipeline.defs.quality.checks import no_crossed_books, scores_above_threshold
from coby_pipeline.defs.replay.assets import replay_dataset
from coby_pipeline.lib import datasets
from coby_pipeline.lib.hours import HourWindow
from coby_pipeline.lib.pg_extract import connection_state_before
from coby_pipeline.lib.quality import SCHEMA as QUALITY_SCHEMA, connected_seconds, intersect
from streamer.contract import BOOK_SNAPSHOTS, FEED_EVENTS, STOPPED

from .pipeline_data import (  # noqa: F401  (fixtures)
    HOUR,
    HOUR_KEY,
    Snapshot,
    SyntheticHour,
    check_evaluation,
    copy_rows,
    datasets_root,
    materialization_metadata,
    pipeline_resources,
    raw_tables,
    resources,
    run_assets,
)

WINDOW = HourWindow.from_key(HOUR_KEY)
ALL = [replay_dataset, quality_scores, no_crossed_books, scores_above_threshold]


def _read_scores(root) -> pl.DataFrame:
    return pl.read_parquet(datasets.hour_table(root, datasets.QUALITY_SCORES, WINDOW))


def _row(table: pl.DataFrame, exchange: str, symbol: str) -> dict:
    rows = table.filter((pl.col("exchange") == exchange) & (pl.col("symbol") == symbol)).to_dicts()
    assert len(rows) == 1, (exchange, symbol)
    return rows[0]


def _latencies_ms(hour: SyntheticHour, exchange: str, symbol: str) -> list[float]:
    pairs = {(u[0], u[1]) for u in hour.updates if u[2] == exchange and u[3] == symbol and u[1] is not None}
    pairs |= {
        (t.local_ts, t.exchange_ts) for t in hour.trades if t.exchange == exchange and t.symbol == symbol and t.exchange_ts
    }
    return [(local - remote) / timedelta(milliseconds=1) for local, remote in pairs]


def _last_row(hour: SyntheticHour, exchange: str):
    times = [s.local_ts for s in hour.snapshots if s.exchange == exchange]
    times += [u[0] for u in hour.updates if u[2] == exchange]
    times += [t.local_ts for t in hour.trades if t.exchange == exchange]
    return max(times)


def test_scores_match_an_independent_computation(settings, raw_tables, resources, datasets_root):
    hour = SyntheticHour()
    hour.events += [
        (HOUR + timedelta(seconds=10), "okx", "SOL-USDT", "gap", "expected 5 got 7"),
        (HOUR + timedelta(seconds=10, milliseconds=500), "okx", "SOL-USDT", "resync", "after gap"),
        (HOUR + timedelta(seconds=20), "binance", "BTC-USDT", "checksum_failed", "crc mismatch"),
        (HOUR + timedelta(seconds=20, milliseconds=100), "binance", "BTC-USDT", "resync", "after checksum_failed"),
        (HOUR + timedelta(seconds=21), "binance", "BTC-USDT", "synced", ""),
    ]
    hour.write(raw_tables, settings.db.schema)
    # binance SOL-USDT loses half a minute of snapshots.
    raw_tables.execute(
        sql.SQL("DELETE FROM {}.book_snapshots WHERE exchange = 'binance' AND symbol = 'SOL-USDT'"
                " AND local_ts >= %s AND local_ts < %s").format(sql.Identifier(settings.db.schema)),
        (HOUR + timedelta(seconds=30), HOUR + timedelta(seconds=60)),
    )
    result = run_assets(ALL, resources)
    assert result.success
    table = _read_scores(datasets_root)
    assert table.schema == QUALITY_SCHEMA
    assert table.height == len(hour.exchanges) * len(hour.books)

    events = {"gaps": {("okx", "SOL-USDT"): 1}, "resyncs": {("okx", "SOL-USDT"): 1, ("binance", "BTC-USDT"): 1},
              "checksum_failed": {("binance", "BTC-USDT"): 1}}
    connected_at = HOUR + timedelta(milliseconds=1)
    for exchange in hour.exchanges:
        up = (_last_row(hour, exchange) - connected_at).total_seconds()
        for symbol in hour.books:
            row = _row(table, exchange, symbol)
            snapshots = {
                s.local_ts for s in hour.snapshots
                if s.exchange == exchange and s.symbol == symbol
                and not (exchange == "binance" and symbol == "SOL-USDT"
                         and HOUR + timedelta(seconds=30) <= s.local_ts < HOUR + timedelta(seconds=60))
            }
            assert row["actual_snapshots"] == len(snapshots)
            assert row["connected_seconds"] == pytest.approx(up, abs=1e-6)
            assert row["expected_snapshots"] == pytest.approx(up, abs=1e-6)
            coverage = min(1.0, len(snapshots) / up)
            assert row["coverage"] == pytest.approx(coverage)

            latencies = _latencies_ms(hour, exchange, symbol)
            assert row["latency_samples"] == len(latencies)
            assert row["latency_p50_ms"] == pytest.approx(np.percentile(latencies, 50), abs=1e-9)
            assert row["latency_p99_ms"] == pytest.approx(np.percentile(latencies, 99), abs=1e-9)

            gaps = events["gaps"].get((exchange, symbol), 0)
            resyncs = events["resyncs"].get((exchange, symbol), 0)
            checksum = events["checksum_failed"].get((exchange, symbol), 0)
            assert (row["gaps"], row["resyncs"], row["checksum_failed"]) == (gaps, resyncs, checksum)
            assert row["crossed_books"] == 0 and row["disconnects"] == 0
            # Latencies are well under a second here, so no latency penalty.
            score = 100 * coverage - 10 * gaps - 10 * checksum - 5 * resyncs
            assert row["score"] == pytest.approx(round(max(0.0, min(100.0, score)), 2))

    binance_sol = _row(table, "binance", "SOL-USDT")
    assert binance_sol["coverage"] < 0.8
    warn = check_evaluation(result, "scores_above_threshold")
    assert not warn.passed and warn.severity.value == "WARN"
    low = {(r["exchange"], r["symbol"]) for r in warn.metadata["below_threshold"].value}
    assert low == set(
        table.filter(pl.col("score") < 80).select("exchange", "symbol").iter_rows()
    ) and ("binance", "SOL-USDT") in low
    assert check_evaluation(result, "no_crossed_books").passed
    metadata = materialization_metadata(result, "quality_scores")
    assert metadata["dagster/row_count"] == table.height
    assert "| binance | SOL-USDT |" in metadata["scores"]


def test_a_crossed_or_locked_snapshot_fails_the_check(settings, raw_tables, resources, datasets_root):
    hour = SyntheticHour(seconds=20)
    hour.write(raw_tables, settings.db.schema)
    bad = [
        # Crossed: best bid above best ask.
        Snapshot(HOUR + timedelta(seconds=5, microseconds=900_000), "binance", "BTC-USDT",
                 [("64010.0", "1.0"), ("64000.0", "2.0")], [("64005.0", "1.5")], 1),
        # Locked: best bid equal to best ask.
        Snapshot(HOUR + timedelta(seconds=6, microseconds=900_000), "okx", "SOL-USDT",
                 [("151.40", "3.0")], [("151.40", "4.0"), ("151.50", "1.0")], 2),
    ]
    copy_rows(raw_tables, settings.db.schema, BOOK_SNAPSHOTS, [r for s in bad for r in s.rows()])
    result = run_assets(ALL, resources)
    assert result.success  # a failed check is reported, the run itself succeeds
    table = _read_scores(datasets_root)
    assert _row(table, "binance", "BTC-USDT")["crossed_books"] == 1
    assert _row(table, "okx", "SOL-USDT")["crossed_books"] == 1
    assert _row(table, "okx", "BTC-USDT")["crossed_books"] == 0

    evaluation = check_evaluation(result, "no_crossed_books")
    assert not evaluation.passed
    assert evaluation.severity.value == "ERROR"
    assert evaluation.metadata["crossed_snapshots"].value == 2
    books = {(b["exchange"], b["symbol"]) for b in evaluation.metadata["books"].value}
    assert books == {("binance", "BTC-USDT"), ("okx", "SOL-USDT")}
    # 25 points off for a wrong book: under the default warning threshold of 80.
    assert _row(table, "binance", "BTC-USDT")["score"] <= 75


def test_connection_state_comes_from_before_the_hour(settings, raw_tables, resources, datasets_root):
    hour = SyntheticHour(seconds=60)
    hour.events = [
        # binance connected long before the hour and stayed up.
        (HOUR - timedelta(minutes=30), "binance", "", "connected", ""),
        # okx went down before the hour and came back 20 s into it.
        (HOUR - timedelta(minutes=40), "okx", "", "connected", ""),
        (HOUR - timedelta(minutes=10), "okx", "", "disconnected", "closed by peer"),
        (HOUR + timedelta(seconds=20), "okx", "", "connected", ""),
        (HOUR + timedelta(seconds=40), "okx", "", "stall", "no frame for 30 s"),
        (HOUR + timedelta(seconds=45), "okx", "", "connected", ""),
    ]
    hour.write(raw_tables, settings.db.schema)
    assert run_assets([replay_dataset, quality_scores], resources).success
    table = _read_scores(datasets_root)
    binance_up = (_last_row(hour, "binance") - HOUR).total_seconds()
    okx_up = 20.0 + (_last_row(hour, "okx") - (HOUR + timedelta(seconds=45))).total_seconds()
    for symbol in hour.books:
        assert _row(table, "binance", symbol)["connected_seconds"] == pytest.approx(binance_up)
        assert _row(table, "binance", symbol)["disconnects"] == 0
        assert _row(table, "okx", symbol)["connected_seconds"] == pytest.approx(okx_up)
        assert _row(table, "okx", symbol)["disconnects"] == 1


def test_a_split_exchange_is_connected_while_all_its_shards_are_up(settings, raw_tables, resources, datasets_root):
    hour = SyntheticHour(seconds=30)
    # okx runs on two shards instead of one connection; binance stays on one.
    hour.events = [e for e in hour.events if e[1] != "okx"] + [
        (HOUR + timedelta(milliseconds=1), "okx", "@1", "connected", ""),
        (HOUR + timedelta(milliseconds=2), "okx", "@2", "connected", ""),
        # @1 down from minute 10 to 20, @2 from 15 to 25: okx misses data from 10 to 25.
        (HOUR + timedelta(minutes=10), "okx", "@1", "disconnected", "closed by peer"),
        (HOUR + timedelta(minutes=15), "okx", "@2", "stall", "no frame for 30 s"),
        (HOUR + timedelta(minutes=20), "okx", "@1", "connected", ""),
        (HOUR + timedelta(minutes=25), "okx", "@2", "connected", ""),
    ]
    # okx keeps writing until late in the hour.
    hour.snapshots.append(Snapshot(HOUR + timedelta(minutes=59, seconds=30), "okx", "BTC-USDT",
                                   [("64000.0", "1.0")], [("64000.5", "1.0")], 1))
    hour.write(raw_tables, settings.db.schema)
    assert run_assets([replay_dataset, quality_scores], resources).success
    table = _read_scores(datasets_root)
    assert table.height == len(hour.exchanges) * len(hour.books)  # no rows for the labels "@1", "@2"
    both_up = HOUR + timedelta(milliseconds=2)
    okx_up = (_last_row(hour, "okx") - both_up).total_seconds() - 15 * 60
    binance_up = (_last_row(hour, "binance") - (HOUR + timedelta(milliseconds=1))).total_seconds()
    for symbol in hour.books:
        assert _row(table, "okx", symbol)["connected_seconds"] == pytest.approx(okx_up, abs=1e-6)
        assert _row(table, "okx", symbol)["disconnects"] == 2  # one per shard
        assert _row(table, "binance", symbol)["connected_seconds"] == pytest.approx(binance_up, abs=1e-6)
        assert _row(table, "binance", symbol)["disconnects"] == 0


def test_shard_states_come_from_before_the_hour(settings, raw_tables, resources, datasets_root):
    schema = settings.db.schema
    hour = SyntheticHour(seconds=60)
    hour.events = [
        (HOUR - timedelta(minutes=30), "binance", "", "connected", ""),
        (HOUR - timedelta(minutes=50), "okx", "@1", "stall", "no frame for 30 s"),
        (HOUR - timedelta(minutes=45), "okx", "@1", "connected", ""),
        (HOUR - timedelta(minutes=40), "okx", "@2", "connected", ""),
        # @2 went down before the hour and never came back.
        (HOUR - timedelta(minutes=10), "okx", "@2", "disconnected", "closed by peer"),
        (HOUR - timedelta(minutes=5), "okx", "BTC-USDT", "gap", "not a connection event"),
    ]
    hour.write(raw_tables, schema)
    # An event inside the hour is not part of the state at its start.
    copy_rows(raw_tables, schema, FEED_EVENTS, [(HOUR + timedelta(seconds=50), "okx", "@1", "stall", "")])
    state = connection_state_before(raw_tables, schema, WINDOW)
    assert state == {("binance", ""): "up", ("okx", "@1"): "up", ("okx", "@2"): "down"}

    assert run_assets([replay_dataset, quality_scores], resources).success
    table = _read_scores(datasets_root)
    binance_up = (_last_row(hour, "binance") - HOUR).total_seconds()
    for symbol in hour.books:
        assert _row(table, "binance", symbol)["connected_seconds"] == pytest.approx(binance_up)
        assert _row(table, "okx", symbol)["connected_seconds"] == 0.0
        assert _row(table, "okx", symbol)["disconnects"] == 1  # the stall of @1 at second 50


def test_a_shard_stopped_on_purpose_before_the_hour_is_retired(settings, raw_tables, resources, datasets_root):
    """okx ran whole until a clean stop, then restarted as two shards: the old
    connection's deliberate stop does not hold the exchange down."""
    hour = SyntheticHour(seconds=60)
    hour.events = [
        (HOUR - timedelta(minutes=30), "binance", "", "connected", ""),
        (HOUR - timedelta(minutes=40), "okx", "", "connected", ""),
        (HOUR - timedelta(minutes=20), "okx", "", "disconnected", STOPPED),
        (HOUR - timedelta(minutes=19), "okx", "@1", "connected", ""),
        (HOUR - timedelta(minutes=19), "okx", "@2", "connected", ""),
        # binance stopped on purpose too, and stayed stopped: on its only connection that is down.
        (HOUR - timedelta(minutes=5), "binance", "", "disconnected", STOPPED),
    ]
    hour.write(raw_tables, settings.db.schema)
    assert connection_state_before(raw_tables, settings.db.schema, WINDOW) == {
        ("binance", ""): "stopped", ("okx", ""): "stopped", ("okx", "@1"): "up", ("okx", "@2"): "up"}
    assert run_assets([replay_dataset, quality_scores], resources).success
    table = _read_scores(datasets_root)
    okx_up = (_last_row(hour, "okx") - HOUR).total_seconds()
    for symbol in hour.books:
        assert _row(table, "okx", symbol)["connected_seconds"] == pytest.approx(okx_up, abs=1e-6)
        assert _row(table, "binance", symbol)["connected_seconds"] == 0.0


@pytest.mark.parametrize(
    ("events", "up_at_start", "last_row_min", "expected_min"),
    [
        ([], None, None, 60),  # nothing known: the whole hour
        ([], False, None, 0),
        ([], True, 50, 50),  # up all along, but the streamer wrote nothing after minute 50
        ([(10, "disconnected"), (20, "connected")], True, 50, 10 + 30),
        ([(10, "stall"), (12, "connected")], True, None, 10 + 48),
        # A second "connected" without a disconnect (a restart after a crash):
        # the time in between still counts as connected (snapshots were missed).
        ([(5, "connected"), (15, "connected")], False, 30, 25),
        ([(5, "disconnected"), (7, "disconnected")], True, None, 5),
    ],
)
def test_connected_seconds(events, up_at_start, last_row_min, expected_min):
    at = [(HOUR + timedelta(minutes=m), kind) for m, kind in events]
    last_row = None if last_row_min is None else HOUR + timedelta(minutes=last_row_min)
    got = connected_seconds(at, window=WINDOW, up_at_start=up_at_start, last_row=last_row)
    assert got == expected_min * 60


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ([(0, 60)], [(0, 10), (20, 60)], [(0, 10), (20, 60)]),
        ([(0, 10), (20, 60)], [(0, 15), (25, 60)], [(0, 10), (25, 60)]),
        # A restart splits an interval in two; the time still counts once.
        ([(0, 30), (30, 60)], [(10, 50)], [(10, 30), (30, 50)]),
        ([(0, 10)], [(10, 20)], []),
        ([], [(0, 60)], []),
    ],
)
def test_intersect(first, second, expected):
    def at(intervals):
        return [(HOUR + timedelta(minutes=a), HOUR + timedelta(minutes=b)) for a, b in intervals]

    assert intersect(at(first), at(second)) == at(expected)
    assert intersect(at(second), at(first)) == at(expected)


def test_without_connection_events_the_whole_hour_counts(settings, raw_tables, resources, datasets_root):
    hour = SyntheticHour(seconds=20)
    hour.events = []
    hour.write(raw_tables, settings.db.schema)
    assert run_assets([replay_dataset, quality_scores], resources).success
    table = _read_scores(datasets_root)
    assert table.height == len(hour.exchanges) * len(hour.books)
    assert table["connected_seconds"].to_list() == [3600.0] * table.height


def test_threshold_comes_from_the_resource(settings, raw_tables, resources, datasets_root):
    hour = SyntheticHour(seconds=60)
    hour.write(raw_tables, settings.db.schema)
    # okx BTC-USDT misses 12 of ~60 seconds of snapshots (some seconds have two): a score around 92.
    raw_tables.execute(
        sql.SQL("DELETE FROM {}.book_snapshots WHERE exchange = 'okx' AND symbol = 'BTC-USDT'"
                " AND local_ts >= %s AND local_ts < %s").format(sql.Identifier(settings.db.schema)),
        (HOUR + timedelta(seconds=20), HOUR + timedelta(seconds=32)),
    )
    lenient = run_assets(ALL, resources)
    score = _row(_read_scores(datasets_root), "okx", "BTC-USDT")["score"]
    assert 80 < score < 100
    assert check_evaluation(lenient, "scores_above_threshold").passed

    strict = run_assets(ALL, pipeline_resources(settings, datasets_root, quality_warn_score=99.0))
    evaluation = check_evaluation(strict, "scores_above_threshold")
    assert not evaluation.passed
    assert evaluation.metadata["threshold"].value == 99.0
    assert ("okx", "BTC-USDT") in {(r["exchange"], r["symbol"]) for r in evaluation.metadata["below_threshold"].value}


def test_events_without_rows_still_get_a_row(settings, raw_tables, resources, datasets_root):
    copy_rows(raw_tables, settings.db.schema, FEED_EVENTS, [
        (HOUR + timedelta(minutes=1), "okx", "", "connected", ""),
        (HOUR + timedelta(minutes=2), "okx", "ETH-USDT", "gap", "lost"),
    ])
    assert run_assets([replay_dataset, quality_scores], resources).success
    row = _row(_read_scores(datasets_root), "okx", "ETH-USDT")
    assert row["gaps"] == 1 and row["actual_snapshots"] == 0
    assert row["connected_seconds"] == pytest.approx(59 * 60)  # from minute 1 to the end of the hour
    assert row["coverage"] == 0.0 and row["score"] == 0.0
    assert row["latency_samples"] == 0 and row["latency_p50_ms"] is None
