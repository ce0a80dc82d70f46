"""Synthetic raw rows for the pipeline tests, written to PostgreSQL with COPY.

Rows are tuples in the contract's column order (:mod:`streamer.contract`);
times are timezone-aware datetimes, prices and sizes floats parsed from
decimal strings (as the streamer stores them). :class:`SyntheticHour` builds
a deterministic hour of book snapshots, book updates, trades and feed events
for a few exchanges and symbols, with the decimal strings kept so tests can
recompute expected values independently with :class:`decimal.Decimal`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from coby_pipeline.defs.resources import AnalyticsSettings, CobyDatabase, DatasetStorage
from streamer.config import Settings
from streamer.contract import BOOK_SNAPSHOTS, BOOK_UPDATES, FEED_EVENTS, TRADES, Table
from streamer.sinks.schema import apply_schema

HOUR = datetime(2025, 3, 4, 5, 0, tzinfo=timezone.utc)
HOUR_KEY = "2025-03-04-05:00"


def create_raw_tables(conn: psycopg.Connection, settings: Settings) -> None:
    """The streamer's tables in the test schema (the real schema code)."""
    apply_schema(conn, settings)


def copy_rows(conn: psycopg.Connection, schema: str, table: Table, rows: list[tuple]) -> int:
    """Append ``rows`` (contract column order) to ``schema.table`` with COPY."""
    statement = sql.SQL("COPY {}.{} ({}) FROM STDIN").format(
        sql.Identifier(schema),
        sql.Identifier(table.name),
        sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names),
    )
    with conn.cursor().copy(statement) as copy:
        for row in rows:
            if len(row) != len(table.columns):
                raise ValueError(f"{table.name} row has {len(row)} values, expected {len(table.columns)}: {row}")
            copy.write_row(row)
    return len(rows)


def pipeline_resources(settings: Settings, datasets_root: Path, **analytics) -> dict:
    """Dagster resources pointing at the test schema and a temporary datasets folder."""
    db = settings.db
    options = {
        "bucket_sizes": {base: str(size) for base, size in settings.bucket_sizes.items()},
        "snapshot_interval_s": 1.0,
        "quality_warn_score": 80.0,
    }
    options.update(analytics)
    return {
        "database": CobyDatabase(
            host=db.host, port=db.port, dbname=db.name, user=db.user, password=db.password, db_schema=db.schema
        ),
        "storage": DatasetStorage(root=str(datasets_root)),
        "analytics": AnalyticsSettings(**options),
    }


def pipeline_env(settings: Settings, datasets_root: Path) -> dict[str, str]:
    """Environment variables that make the code location's resources reach the test schema."""
    db = settings.db
    env = {
        "DB_HOST": str(db.host),
        "DB_PORT": str(db.port),
        "DB_NAME": db.name,
        "DB_USER": db.user,
        "COBY_DB_SCHEMA": db.schema,
        "COBY_DATASETS_DIR": str(datasets_root),
    }
    if db.password:
        env["DB_PASSWORD"] = db.password
    return env


def us(moment: datetime, micros: int) -> datetime:
    return moment + timedelta(microseconds=micros)


@dataclass
class Snapshot:
    local_ts: datetime
    exchange: str
    symbol: str
    bids: list[tuple[str, str]]  # best first, decimal strings
    asks: list[tuple[str, str]]
    seq: int | None = None

    def rows(self) -> list[tuple]:
        out = [
            (self.local_ts, self.exchange, self.symbol, "bid", i, float(p), float(s), self.seq)
            for i, (p, s) in enumerate(self.bids)
        ]
        out += [
            (self.local_ts, self.exchange, self.symbol, "ask", i, float(p), float(s), self.seq)
            for i, (p, s) in enumerate(self.asks)
        ]
        return out


@dataclass
class Trade:
    local_ts: datetime
    exchange_ts: datetime | None
    exchange: str
    symbol: str
    trade_id: str
    price: str
    size: str
    side: str

    def row(self) -> tuple:
        return (
            self.local_ts, self.exchange_ts, self.exchange, self.symbol, self.trade_id,
            float(self.price), float(self.size), self.side,
        )


@dataclass
class SyntheticHour:
    """A deterministic hour of raw data (``seconds`` seconds of it)."""

    start: datetime = HOUR
    seconds: int = 90
    seed: int = 7
    #: symbol -> (mid price, tick size), decimal strings
    books: dict[str, tuple[str, str]] = field(
        default_factory=lambda: {"BTC-USDT": ("64000.5", "0.1"), "SOL-USDT": ("151.37", "0.01")}
    )
    exchanges: tuple[str, ...] = ("binance", "okx")
    depth: int = 6
    snapshots: list[Snapshot] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)
    updates: list[tuple] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        seq = 1000
        trade_id = 1
        for exchange in self.exchanges:
            self.events.append((us(self.start, 1_000), exchange, "", "connected", "wss://example"))
        for second in range(self.seconds):
            base = self.start + timedelta(seconds=second)
            for exchange in self.exchanges:
                for symbol, (mid, tick) in self.books.items():
                    mid_d, tick_d = Decimal(mid), Decimal(tick)
                    drift = tick_d * rng.randint(-30, 30)
                    # One snapshot most seconds; two in some (the later one counts).
                    offsets = [200_000] if second % 7 else [150_000, 650_000]
                    for offset in offsets:
                        best_bid = mid_d + drift - tick_d * rng.randint(1, 3)
                        best_ask = mid_d + drift + tick_d * rng.randint(1, 3)
                        bids = [(str(best_bid - tick_d * 7 * i), _size(rng)) for i in range(self.depth)]
                        asks = [(str(best_ask + tick_d * 7 * i), _size(rng)) for i in range(self.depth)]
                        seq += 1
                        self.snapshots.append(Snapshot(us(base, offset), exchange, symbol, bids, asks, seq))
                    for n in range(rng.randint(0, 3)):
                        local = us(base, 300_000 + n * 10_000 + rng.randint(0, 999))
                        latency = rng.randint(2_000, 90_000)  # 2-90 ms
                        price = mid_d + drift + tick_d * rng.randint(-40, 40)
                        self.trades.append(
                            Trade(
                                local, local - timedelta(microseconds=latency), exchange, symbol, str(trade_id),
                                str(price), _size(rng), rng.choice(["buy", "sell"]),
                            )
                        )
                        trade_id += 1
                    # A frame of updates: three levels sharing local/exchange time.
                    local = us(base, 500_000 + rng.randint(0, 999))
                    exchange_ts = None if second % 11 == 0 else local - timedelta(microseconds=rng.randint(1_000, 40_000))
                    seq += 1
                    for side in ("bid", "ask", "bid"):
                        price = mid_d + drift + tick_d * rng.randint(-20, 20)
                        self.updates.append(
                            (local, exchange_ts, exchange, symbol, side, float(price), float(_size(rng)), False, seq, seq - 1)
                        )

    def write(self, conn: psycopg.Connection, schema: str) -> dict[str, int]:
        return {
            "book_snapshots": copy_rows(conn, schema, BOOK_SNAPSHOTS, [r for s in self.snapshots for r in s.rows()]),
            "book_updates": copy_rows(conn, schema, BOOK_UPDATES, self.updates),
            "trades": copy_rows(conn, schema, TRADES, [t.row() for t in self.trades]),
            "feed_events": copy_rows(conn, schema, FEED_EVENTS, self.events),
        }


def _size(rng: random.Random) -> str:
    return f"{rng.randint(1, 250_000) / 1000:.3f}"


# ---------------------------------------------------------------------------
# Fixtures (imported by the test_pipeline_* modules)
# ---------------------------------------------------------------------------


@pytest.fixture
def raw_tables(settings: Settings, pg_conn: psycopg.Connection) -> psycopg.Connection:
    """The raw tables, empty, in the test schema; returns the connection."""
    create_raw_tables(pg_conn, settings)
    return pg_conn


@pytest.fixture
def synthetic_hour(settings: Settings, raw_tables: psycopg.Connection) -> SyntheticHour:
    """A deterministic hour of raw data, written to PostgreSQL."""
    hour = SyntheticHour()
    hour.write(raw_tables, settings.db.schema)
    return hour


@pytest.fixture
def datasets_root(tmp_path: Path) -> Path:
    return tmp_path / "datasets"


@pytest.fixture
def resources(settings: Settings, datasets_root: Path) -> dict:
    return pipeline_resources(settings, datasets_root)


def run_assets(defs: list, resources: dict, *, partition_key: str = HOUR_KEY, selection=None) -> dg.ExecuteInProcessResult:
    """Materialize assets (and run checks) for one hour in-process, on an ephemeral instance."""
    return dg.materialize(
        defs,
        partition_key=partition_key,
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        selection=selection,
    )


def run_checks_only(assets: list, checks: list, resources: dict, *, partition_key: str = HOUR_KEY):
    """Run asset checks for one hour without re-materializing their assets."""
    from coby_pipeline.defs.partitions import hourly_partitions

    job = dg.define_asset_job("checks_only", selection=dg.AssetSelection.checks(*checks), partitions_def=hourly_partitions)
    defs = dg.Definitions(assets=assets, asset_checks=checks, jobs=[job], resources=resources)
    # A checks-only selection has no partitions definition of its own to
    # validate a partition_key against, so the hour goes in as the run's tag.
    return defs.resolve_job_def("checks_only").execute_in_process(
        tags={"dagster/partition": partition_key}, instance=dg.DagsterInstance.ephemeral()
    )


def materialization_metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    """The plain metadata values of an asset's materialization in ``result``."""
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key.to_user_string() == asset:
            return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
    raise KeyError(f"{asset} was not materialized")


def check_evaluation(result: dg.ExecuteInProcessResult, check: str):
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.check_name == check:
            return evaluation
    raise KeyError(f"check {check} did not run")
