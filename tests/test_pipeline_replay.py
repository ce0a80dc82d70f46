"""The replay dataset: PostgreSQL hour -> Hive-partitioned Parquet, exact and idempotent."""

from __future__ import annotations

import math
from datetime import timedelta

import duckdb
import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from coby_pipeline.defs.replay.assets import replay_dataset
from coby_pipeline.defs.replay.checks import replay_rows_match_postgres
from coby_pipeline.lib import replay
from coby_pipeline.lib.hours import HourWindow
from coby_pipeline.lib.pg_extract import read_hour
from streamer.contract import BOOK_UPDATES, REPLAY_KINDS, TRADES

from .pipeline_data import (  # noqa: F401  (fixtures)
    HOUR,
    HOUR_KEY,
    check_evaluation,
    copy_rows,
    datasets_root,
    materialization_metadata,
    raw_tables,
    resources,
    run_assets,
    run_checks_only,
    synthetic_hour,
)

WINDOW = HourWindow.from_key(HOUR_KEY)


def _replay_query(root, kind: str) -> str:
    # The query from the asset's docstring, verbatim apart from the folder.
    glob = (root / "replay" / kind / "**" / "*.parquet").as_posix()
    return f"SELECT * FROM read_parquet('{glob}', hive_partitioning=true)"


def _duckdb(query: str) -> list[tuple]:
    with duckdb.connect() as con:
        return con.sql(query).fetchall()


def _pg_rows(conn: psycopg.Connection, schema: str, kind: str) -> list[tuple]:
    table = REPLAY_KINDS[kind]
    query = sql.SQL("SELECT {} FROM {}.{}").format(
        sql.SQL(", ").join(map(sql.Identifier, table.column_names)), sql.Identifier(schema), sql.Identifier(kind)
    )
    return conn.execute(query).fetchall()


def test_replay_writes_hive_parquet_that_duckdb_reads_back_exactly(
    settings, raw_tables, synthetic_hour, resources, datasets_root
):
    result = run_assets([replay_dataset], resources)
    assert result.success
    metadata = materialization_metadata(result, "replay_dataset")
    # The snippet shown in the UI runs as is and returns the hour in time order.
    snippet = metadata["duckdb"].removeprefix("```sql\n").removesuffix("\n```")
    assert snippet == replay.duckdb_query(datasets_root, "book_updates", WINDOW)
    shown = _duckdb(f"SELECT local_ts FROM ({snippet})")
    assert len(shown) == metadata["rows_book_updates"] and shown == sorted(shown)

    for kind, table in REPLAY_KINDS.items():
        expected = _pg_rows(raw_tables, settings.db.schema, kind)
        assert expected, kind
        assert metadata[f"rows_{kind}"] == len(expected)
        replay_sql = _replay_query(datasets_root, kind)
        got = _duckdb(f"SELECT {', '.join(table.column_names)} FROM ({replay_sql})")
        # Same rows, values bit for bit (floats, microseconds, NULLs).
        assert sorted(got, key=repr) == sorted(expected, key=repr)
        hive = _duckdb(f"SELECT DISTINCT exchange, symbol, date::VARCHAR, hour FROM ({replay_sql})")
        pairs = {(e, s) for e, s, *_ in expected_pairs(expected, table)}
        assert {(e, s) for e, s, _, _ in hive} == pairs
        assert {(d, h) for _, _, d, h in hive} == {(WINDOW.date, WINDOW.hour)}

        for path in replay.hour_files(datasets_root, kind, WINDOW):
            parquet = pq.ParquetFile(path)
            assert parquet.schema_arrow.remove_metadata() == table.arrow_schema().remove_metadata()
            assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
            times = parquet.read(columns=["local_ts"]).column("local_ts").to_pylist()
            assert times == sorted(times), f"{path} not sorted by local_ts"
            exchange, symbol = replay.pair_of(path)
            assert set(parquet.read(columns=["exchange"]).column(0).to_pylist()) == {exchange}
            assert set(parquet.read(columns=["symbol"]).column(0).to_pylist()) == {symbol}


def expected_pairs(rows: list[tuple], table) -> set[tuple[str, str]]:
    e, s = table.column_names.index("exchange"), table.column_names.index("symbol")
    return {(row[e], row[s]) for row in rows}


def test_rematerializing_replaces_the_hour_without_duplicates(
    settings, raw_tables, synthetic_hour, resources, datasets_root
):
    assert run_assets([replay_dataset], resources).success
    files_before = {kind: replay.hour_files(datasets_root, kind, WINDOW) for kind in REPLAY_KINDS}
    assert run_assets([replay_dataset], resources).success
    for kind in REPLAY_KINDS:
        assert replay.hour_files(datasets_root, kind, WINDOW) == files_before[kind]
        count = _duckdb(f"SELECT count(*) FROM ({_replay_query(datasets_root, kind)})")[0][0]
        assert count == len(_pg_rows(raw_tables, settings.db.schema, kind))
    # No temporary files are left behind.
    assert not [p for p in datasets_root.rglob("*") if p.name.endswith(".tmp")]

    # The hour changes in PostgreSQL: okx trades disappear, a binance trade arrives late.
    schema = sql.Identifier(settings.db.schema)
    raw_tables.execute(sql.SQL("DELETE FROM {}.trades WHERE exchange = 'okx'").format(schema))
    last_microsecond = HOUR + timedelta(hours=1) - timedelta(microseconds=1)
    late = (last_microsecond, None, "binance", "BTC-USDT", "late-1", 64001.5, 0.25, "buy")
    copy_rows(raw_tables, settings.db.schema, TRADES, [late])
    assert run_assets([replay_dataset], resources).success

    trades = _replay_query(datasets_root, "trades")
    assert _duckdb(f"SELECT count(*) FROM ({trades}) WHERE exchange = 'okx'")[0][0] == 0
    assert not any(replay.pair_of(p)[0] == "okx" for p in replay.hour_files(datasets_root, "trades", WINDOW))
    assert _duckdb(f"SELECT count(*) FROM ({trades})")[0][0] == len(_pg_rows(raw_tables, settings.db.schema, "trades"))
    last = _duckdb(
        f"SELECT trade_id FROM ({trades}) WHERE exchange = 'binance' AND symbol = 'BTC-USDT' ORDER BY local_ts DESC LIMIT 1"
    )
    assert last == [("late-1",)]


def test_read_hour_is_exact_and_respects_the_hour_bounds(settings, raw_tables):
    schema = settings.db.schema
    rows = [
        # On the first microsecond of the hour: included.
        (HOUR, None, "okx", "BTC-USDT", "bid", 0.1, 1e-8, True, None, -1),
        (HOUR + timedelta(microseconds=1), HOUR - timedelta(microseconds=3), "okx", "BTC-USDT", "ask",
         123456789.123456, 0.30000000000000004, False, 2**62, 2**62 - 1),
        (HOUR + timedelta(minutes=59, seconds=59, microseconds=999_999), HOUR, "kraken", "ETH-USD", "bid",
         64000.5, 0.0, False, 7, 6),
        # On the first microsecond of the next hour: excluded.
        (HOUR + timedelta(hours=1), None, "okx", "BTC-USDT", "bid", 1.0, 1.0, False, 8, 7),
        (HOUR - timedelta(microseconds=1), None, "okx", "BTC-USDT", "bid", 1.0, 1.0, False, 9, 8),
    ]
    copy_rows(raw_tables, schema, BOOK_UPDATES, rows)
    trades = [
        # Free text survives commas, quotes, newlines and empty strings.
        (HOUR + timedelta(seconds=1), None, "okx", "BTC-USDT", 'a,"b"\nc', 1.5, 2.5, "buy"),
        (HOUR + timedelta(seconds=2), None, "okx", "BTC-USDT", "", 1.5, 2.5, "sell"),
    ]
    copy_rows(raw_tables, schema, TRADES, trades)

    got = read_hour(raw_tables, schema, BOOK_UPDATES, WINDOW)
    assert got.schema == BOOK_UPDATES.arrow_schema()
    as_tuples = sorted(tuple(r.values()) for r in got.to_pylist())
    assert as_tuples == sorted(rows[:3])
    got_trades = read_hour(raw_tables, schema, TRADES, WINDOW).to_pylist()
    assert sorted(t["trade_id"] for t in got_trades) == sorted(['a,"b"\nc', ""])
    # Values that should never be stored still come back as they are, not as errors.
    odd = (HOUR + timedelta(seconds=3), None, "okx", "BTC-USDT", "nan-1", float("nan"), float("inf"), "buy")
    copy_rows(raw_tables, schema, TRADES, [odd])
    (got_odd,) = [t for t in read_hour(raw_tables, schema, TRADES, WINDOW).to_pylist() if t["trade_id"] == "nan-1"]
    assert math.isnan(got_odd["price"]) and got_odd["size"] == float("inf")
    only_ts = read_hour(raw_tables, schema, BOOK_UPDATES, WINDOW, columns=["exchange_ts"]).column(0).to_pylist()
    nulls_first = lambda t: (t is not None, t)  # noqa: E731
    assert sorted(only_ts, key=nulls_first) == sorted((r[1] for r in rows[:3]), key=nulls_first)
    # The session's own settings are untouched by the extraction.
    assert raw_tables.execute("SHOW extra_float_digits").fetchone()[0] == "1"


def test_empty_hour_writes_nothing_and_succeeds(raw_tables, resources, datasets_root):
    result = run_assets([replay_dataset], resources)
    assert result.success
    metadata = materialization_metadata(result, "replay_dataset")
    assert metadata["dagster/row_count"] == 0
    assert all(not replay.hour_files(datasets_root, kind, WINDOW) for kind in REPLAY_KINDS)


def test_row_count_check_warns_about_rows_that_arrive_after_materialization(
    settings, raw_tables, synthetic_hour, resources
):
    both = [replay_dataset, replay_rows_match_postgres]
    first = run_assets(both, resources)
    evaluation = check_evaluation(first, "replay_rows_match_postgres")
    assert evaluation.passed

    late = (HOUR + timedelta(minutes=30), None, "okx", "SOL-USDT", "late-2", 151.2, 3.0, "sell")
    copy_rows(raw_tables, settings.db.schema, TRADES, [late])
    only_check = run_checks_only([replay_dataset], [replay_rows_match_postgres], resources)
    evaluation = check_evaluation(only_check, "replay_rows_match_postgres")
    assert not evaluation.passed
    assert evaluation.severity.value == "WARN"
    mismatches = evaluation.metadata["mismatches"].value
    assert set(mismatches) == {"trades"}
    pair = mismatches["trades"]["okx/SOL-USDT"]
    assert pair["postgres"] == pair["parquet"] + 1


def test_hive_values_that_are_not_folder_safe_are_refused(settings, raw_tables, resources):
    copy_rows(raw_tables, settings.db.schema, TRADES, [(HOUR, None, "okx", "../evil", "1", 1.0, 1.0, "buy")])
    with pytest.raises(ValueError, match="cannot be a Hive partition folder name"):
        run_assets([replay_dataset], resources)
