"""Schema creation: versioned, idempotent, race-free; native daily partitions."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import psycopg
import pytest
from psycopg import sql

from streamer.contract import BOOK_UPDATES, TABLES, TRADES
from streamer.sinks.schema import (
    MIGRATIONS,
    NATIVE,
    apply_schema,
    applied_versions,
    default_partition_name,
    list_partitions,
    maintain_partitions,
)

NOW = datetime(2026, 3, 10, 15, 30, tzinfo=timezone.utc)
TIME_TABLES = [t for t in TABLES if t.time_column]


def _tables_in(conn, schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
        (schema,),
    ).fetchall()
    return {r[0] for r in rows}


def _insert_trade(conn, schema: str, ts: datetime, trade_id: str = "t1") -> str:
    """Insert one trade; returns the partition that stored it."""
    row = conn.execute(
        sql.SQL(
            "INSERT INTO {}.trades (local_ts, exchange_ts, exchange, symbol, trade_id, price, size, side)"
            " VALUES (%s, NULL, 'binance', 'BTC-USDT', %s, 1.5, 2.0, 'buy') RETURNING tableoid::regclass::text"
        ).format(sql.Identifier(schema)),
        (ts, trade_id),
    ).fetchone()
    return row[0].split(".")[-1]


def test_apply_creates_every_contract_table_and_is_idempotent(settings, pg_conn):
    first = apply_schema(pg_conn, settings, now=NOW)
    assert first.mode == NATIVE
    assert first.migrations_applied == [v for v, _, _ in MIGRATIONS]
    names = _tables_in(pg_conn, settings.db.schema)
    assert {t.name for t in TABLES} | {"schema_migrations"} <= names

    second = apply_schema(pg_conn, settings, now=NOW)
    assert second.migrations_applied == []
    assert second.partitions_created == [] and second.partitions_dropped == []
    assert _tables_in(pg_conn, settings.db.schema) == names
    assert applied_versions(pg_conn, settings.db.schema) == [v for v, _, _ in MIGRATIONS]
    ledger = pg_conn.execute("SELECT version, applied_at, description FROM schema_migrations ORDER BY version").fetchall()
    assert all(applied_at is not None and description for _, applied_at, description in ledger)


def test_concurrent_apply_from_two_connections_applies_each_migration_once(settings):
    barrier = threading.Barrier(2)
    reports, errors = [], []

    def worker():
        try:
            with psycopg.connect(settings.db.url(), autocommit=True) as conn:
                barrier.wait(timeout=30)
                reports.append(apply_schema(conn, settings, now=NOW))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(reports) == 2
    applied = sorted(v for r in reports for v in r.migrations_applied)
    assert applied == [v for v, _, _ in MIGRATIONS]  # each exactly once, by one of them
    created = [p for r in reports for p in r.partitions_created]
    assert len(created) == len(set(created))  # no partition created twice


def test_partitions_cover_today_and_the_days_ahead_plus_default(settings, pg_conn):
    ahead = 3
    settings = replace(settings, partitions_ahead_days=ahead)
    report = apply_schema(pg_conn, settings, now=NOW)
    expected_days = {NOW.date() + timedelta(days=i) for i in range(ahead + 1)}
    for table in TIME_TABLES:
        assert set(list_partitions(pg_conn, settings.db.schema, table)) == expected_days
        assert default_partition_name(table) in _tables_in(pg_conn, settings.db.schema)
    assert len(report.partitions_created) == len(expected_days) * len(TIME_TABLES)
    # Plain (non time) tables are not partitioned.
    kind = pg_conn.execute(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = 'instruments'",
        (settings.db.schema,),
    ).fetchone()[0]
    assert kind == "r"


def test_rows_land_in_their_day_partition_and_far_rows_in_default(settings, pg_conn):
    apply_schema(pg_conn, settings, now=NOW)
    schema = settings.db.schema
    assert _insert_trade(pg_conn, schema, NOW) == f"trades_p{NOW:%Y%m%d}"
    assert _insert_trade(pg_conn, schema, NOW + timedelta(days=400)) == "trades_default"
    assert _insert_trade(pg_conn, schema, datetime(1999, 1, 1, tzinfo=timezone.utc)) == "trades_default"
    # Boundary: midnight UTC belongs to the new day.
    midnight = datetime.combine(NOW.date() + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc)
    assert _insert_trade(pg_conn, schema, midnight) == f"trades_p{midnight:%Y%m%d}"
    assert _insert_trade(pg_conn, schema, midnight - timedelta(microseconds=1)) == f"trades_p{NOW:%Y%m%d}"


def test_maintenance_moves_default_rows_into_new_day_partitions(settings, pg_conn):
    apply_schema(pg_conn, settings, now=NOW)
    schema = settings.db.schema
    later = NOW + timedelta(days=5)
    assert _insert_trade(pg_conn, schema, later, "waiting") == "trades_default"

    report = maintain_partitions(pg_conn, settings, later)
    assert f"trades_p{later:%Y%m%d}" in report.partitions_created
    assert report.rows_moved_from_default == 1
    where = pg_conn.execute(
        sql.SQL("SELECT tableoid::regclass::text FROM {}.trades WHERE trade_id = 'waiting'").format(sql.Identifier(schema))
    ).fetchall()
    assert [w[0].split(".")[-1] for w in where] == [f"trades_p{later:%Y%m%d}"]


def test_partitions_past_retention_are_dropped_and_recent_ones_kept(settings, pg_conn):
    settings = replace(settings, retention_days=7, partitions_ahead_days=1)
    apply_schema(pg_conn, settings, now=NOW)
    schema = settings.db.schema
    _insert_trade(pg_conn, schema, NOW, "old")

    # Daily maintenance for a week: nothing is old enough to drop yet.
    for i in range(1, settings.retention_days + 1):
        assert maintain_partitions(pg_conn, settings, NOW + timedelta(days=i)).partitions_dropped == []
    later = NOW + timedelta(days=10)
    _insert_trade(pg_conn, schema, datetime(2000, 1, 1, tzinfo=timezone.utc), "ancient")  # in DEFAULT
    report = maintain_partitions(pg_conn, settings, later)

    cutoff = later.date() - timedelta(days=settings.retention_days)
    remaining = set(list_partitions(pg_conn, schema, TRADES))
    assert remaining and min(remaining) == cutoff
    assert all(day >= cutoff for day in remaining)
    assert max(remaining) == later.date() + timedelta(days=settings.partitions_ahead_days)
    dropped_days = {NOW.date() + timedelta(days=i) for i in range(3)}  # cutoff is NOW + 3 days
    assert {f"trades_p{d:%Y%m%d}" for d in dropped_days} <= set(report.partitions_dropped)
    assert {f"book_updates_p{d:%Y%m%d}" for d in dropped_days} <= set(report.partitions_dropped)
    assert report.expired_default_rows == 1
    ids = pg_conn.execute(sql.SQL("SELECT trade_id FROM {}.trades").format(sql.Identifier(schema))).fetchall()
    assert ids == []


def test_brin_index_on_every_time_table_and_partitions_inherit_it(settings, pg_conn):
    apply_schema(pg_conn, settings, now=NOW)
    rows = pg_conn.execute(
        "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = %s", (settings.db.schema,)
    ).fetchall()
    by_table: dict[str, list[str]] = {}
    for table, indexdef in rows:
        by_table.setdefault(table, []).append(indexdef)
    for table in TIME_TABLES:
        assert any("USING brin (local_ts)" in d for d in by_table.get(table.name, [])), table.name
        day = f"{table.name}_p{NOW:%Y%m%d}"
        assert any("USING brin (local_ts)" in d for d in by_table.get(day, [])), day
        # No B-tree on the time tables: they would slow COPY.
        assert not any("USING btree" in d for d in by_table.get(table.name, []))


def test_schema_name_must_be_a_plain_identifier(settings, pg_conn):
    bad = settings.with_db(schema='x"; DROP SCHEMA public; --')
    with pytest.raises(ValueError, match="identifier"):
        apply_schema(pg_conn, bad)


def test_timescale_is_used_only_when_available(settings, pg_conn):
    available = pg_conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
    report = apply_schema(pg_conn, settings, now=NOW)
    if available is None:
        assert report.mode == NATIVE
        relkind = pg_conn.execute(
            "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (settings.db.schema, BOOK_UPDATES.name),
        ).fetchone()[0]
        assert relkind == "p"
    else:
        assert report.mode in {"timescale", NATIVE}


def test_now_must_be_timezone_aware(settings, pg_conn):
    apply_schema(pg_conn, settings, now=NOW)
    with pytest.raises(ValueError, match="timezone"):
        maintain_partitions(pg_conn, settings, datetime(2026, 1, 1))


def test_partition_day_parsing_ignores_foreign_children(settings, pg_conn):
    apply_schema(pg_conn, settings, now=NOW)
    days = list_partitions(pg_conn, settings.db.schema, TRADES)
    assert all(isinstance(d, date) for d in days)
    assert date(2026, 3, 10) in days
