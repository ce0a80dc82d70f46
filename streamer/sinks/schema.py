"""The PostgreSQL schema: versioned, idempotent, generated from the contract.

:func:`apply_schema` brings ``settings.db.schema`` up to date:

1. ``CREATE SCHEMA`` and the ``schema_migrations(version, applied_at,
   description)`` ledger.
2. Every pending migration of :data:`MIGRATIONS`, in order, each in its own
   transaction holding a per-schema advisory lock, so two processes starting
   at once apply each migration exactly once (the second waits, then sees it
   applied). Table DDL comes only from :meth:`streamer.contract.Table.create_sql`.
3. Partition maintenance (:func:`maintain_partitions`).

Time tables (``Table.time_column`` set) are stored one of two ways, chosen
when the tables are first created and detected from the catalog afterwards:

- **TimescaleDB** when the ``timescaledb`` extension is available: hypertables
  with one-day chunks and a retention policy of ``retention_days``.
- **Native** otherwise: ``PARTITION BY RANGE (local_ts)`` with one partition
  per UTC day (``<table>_pYYYYMMDD``), created ``partitions_ahead_days`` ahead,
  and a ``<table>_default`` DEFAULT partition. The DEFAULT partition is the
  safety net: a row whose time has no daily partition (a clock far off, a
  replay of old data, maintenance that has not run) is stored there instead of
  being rejected, so no row is ever lost. Maintenance later moves rows of
  recent days out of DEFAULT into their own daily partitions.

Indexes: a BRIN index on ``local_ts`` per time table. BRIN costs almost nothing
on COPY (B-tree indexes slow bulk loads a lot) and suits append-mostly,
time-ordered data; the pipeline reads by time range.

Identifiers are validated (config and contract) and composed with
:class:`psycopg.sql.Identifier`; values are bound parameters or
:class:`psycopg.sql.Literal` (DDL cannot take bind parameters).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Callable

import psycopg
from psycopg import sql

from ..config import Settings
from ..contract import INGEST_CHECKPOINTS, TABLES, Table, validate_identifier
from ..errors import SchemaError

log = logging.getLogger(__name__)

TIMESCALE = "timescale"
NATIVE = "native"

#: How long maintenance waits for a table lock before giving up until next time
#: (a long COPY must not be queued behind, nor stall writers behind the DDL).
MAINTENANCE_LOCK_TIMEOUT = "5s"

_PARTITION_NAME = re.compile(r"^(?P<table>[a-z_][a-z0-9_]*)_p(?P<day>\d{8})$")


@dataclass
class SchemaReport:
    """What :func:`apply_schema` / :func:`maintain_partitions` did."""

    schema: str
    mode: str  # "timescale" or "native"
    migrations_applied: list[int] = field(default_factory=list)
    partitions_created: list[str] = field(default_factory=list)
    partitions_dropped: list[str] = field(default_factory=list)
    #: Rows moved out of DEFAULT partitions into new daily partitions.
    rows_moved_from_default: int = 0
    #: Rows older than the retention deleted from DEFAULT partitions.
    expired_default_rows: int = 0
    notes: list[str] = field(default_factory=list)

    def merge(self, other: "SchemaReport") -> None:
        self.partitions_created += other.partitions_created
        self.partitions_dropped += other.partitions_dropped
        self.rows_moved_from_default += other.rows_moved_from_default
        self.expired_default_rows += other.expired_default_rows
        self.notes += other.notes

    def __str__(self) -> str:
        parts = [
            f"schema {self.schema} ({self.mode})",
            f"migrations applied {self.migrations_applied or 'none'}",
            f"partitions created {len(self.partitions_created)}",
            f"dropped {len(self.partitions_dropped)}",
        ]
        if self.rows_moved_from_default:
            parts.append(f"rows moved from default {self.rows_moved_from_default}")
        if self.expired_default_rows:
            parts.append(f"expired default rows {self.expired_default_rows}")
        parts += self.notes
        return "; ".join(parts)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _lock(conn: psycopg.Connection, schema: str) -> None:
    """Transaction-scoped advisory lock for DDL on ``schema`` (released at commit)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"coby.schema.{schema}",))


def _qualified(schema: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def _time_tables() -> list[Table]:
    return [t for t in TABLES if t.time_column]


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=timezone.utc)


def partition_name(table: Table, day: date) -> str:
    return validate_identifier(f"{table.name}_p{day:%Y%m%d}")


def default_partition_name(table: Table) -> str:
    return validate_identifier(f"{table.name}_default")


def _utc_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(timezone.utc)


def _relkind(conn: psycopg.Connection, schema: str, name: str) -> str | None:
    row = conn.execute(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (schema, name),
    ).fetchone()
    return None if row is None else row[0]


def _timescale_available(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone() is not None


def _is_hypertable(conn: psycopg.Connection, schema: str, name: str) -> bool:
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is None:
        return False
    row = conn.execute(
        "SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_schema = %s AND hypertable_name = %s",
        (schema, name),
    ).fetchone()
    return row is not None


def storage_mode(conn: psycopg.Connection, schema: str) -> str | None:
    """How the time tables of ``schema`` are stored, or None before they exist."""
    first = _time_tables()[0]
    kind = _relkind(conn, schema, first.name)
    if kind is None:
        return None
    if kind == "p":
        return NATIVE
    if _is_hypertable(conn, schema, first.name):
        return TIMESCALE
    raise SchemaError(f"{schema}.{first.name} exists but is neither partitioned nor a hypertable")


# ---------------------------------------------------------------------------
# Migrations: (version, description, apply). Append only; never edit an applied one.
# ---------------------------------------------------------------------------


@dataclass
class _Context:
    conn: psycopg.Connection
    settings: Settings
    schema: str
    mode: str
    report: SchemaReport


def _m1_tables(ctx: _Context) -> None:
    """Every contract table; time tables partitioned (native) or hypertables."""
    partitioned = ctx.mode == NATIVE
    for table in TABLES:
        ctx.conn.execute(sql.SQL(table.create_sql(ctx.schema, partitioned=partitioned)))  # type: ignore[arg-type]
        if not table.time_column:
            continue
        if partitioned:
            ctx.conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} DEFAULT").format(
                    _qualified(ctx.schema, default_partition_name(table)), _qualified(ctx.schema, table.name)
                )
            )
        else:
            _make_hypertable(ctx, table)


def _make_hypertable(ctx: _Context, table: Table) -> None:
    relation = f"{ctx.schema}.{table.name}"  # both parts validated identifiers
    try:
        with ctx.conn.transaction():  # savepoint: fall back to the pre-2.13 signature
            ctx.conn.execute(
                "SELECT create_hypertable(%s::regclass, by_range(%s, INTERVAL '1 day'), if_not_exists => TRUE)",
                (relation, table.time_column),
            )
    except psycopg.errors.UndefinedFunction:
        ctx.conn.execute(
            "SELECT create_hypertable(%s::regclass, %s, chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE)",
            (relation, table.time_column),
        )
    ctx.conn.execute(
        "SELECT add_retention_policy(%s::regclass, drop_after => make_interval(days => %s), if_not_exists => TRUE)",
        (relation, ctx.settings.retention_days),
    )


def _m2_brin_indexes(ctx: _Context) -> None:
    """BRIN on the time column: cheap to maintain under COPY, good for time ranges."""
    for table in _time_tables():
        ctx.conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING brin ({})").format(
                sql.Identifier(validate_identifier(f"{table.name}_{table.time_column}_brin")),
                _qualified(ctx.schema, table.name),
                sql.Identifier(table.time_column),  # type: ignore[arg-type]
            )
        )


def _m3_checkpoints(ctx: _Context) -> None:
    """The journal checkpoints, written with the rows they cover."""
    ctx.conn.execute(sql.SQL(INGEST_CHECKPOINTS.create_sql(ctx.schema, partitioned=False)))  # type: ignore[arg-type]


Migration = tuple[int, str, Callable[[_Context], None]]

MIGRATIONS: tuple[Migration, ...] = (
    (1, "contract tables (time tables partitioned by day or hypertables)", _m1_tables),
    (2, "BRIN indexes on local_ts", _m2_brin_indexes),
    (3, "ingest checkpoints of the streamer's journals", _m3_checkpoints),
)


# ---------------------------------------------------------------------------
# apply_schema
# ---------------------------------------------------------------------------


def _choose_mode(conn: psycopg.Connection, schema: str, report: SchemaReport) -> str:
    existing = storage_mode(conn, schema)
    if existing is not None:
        return existing
    if not _timescale_available(conn):
        return NATIVE
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        return TIMESCALE
    except psycopg.Error as exc:
        # Installed but unusable (e.g. not in shared_preload_libraries, or no privilege).
        report.notes.append(f"timescaledb available but not usable ({exc.diag.message_primary}); native partitions")
        return NATIVE


def apply_schema(conn: psycopg.Connection, settings: Settings, *, now: datetime | None = None) -> SchemaReport:
    """Create or upgrade ``settings.db.schema``; safe to call from several processes at once.

    ``conn`` should be an autocommit connection (each step commits on its own;
    in an open transaction the steps become savepoints and the advisory lock
    is held until the caller commits). ``now`` (timezone-aware) is the time
    partitions are created around; default: the current time.
    """
    schema = validate_identifier(settings.db.schema)
    with conn.transaction():
        _lock(conn, schema)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now(), description text NOT NULL)"
            ).format(_qualified(schema, "schema_migrations"))
        )
    report = SchemaReport(schema=schema, mode=NATIVE)
    with conn.transaction():
        _lock(conn, schema)
        report.mode = _choose_mode(conn, schema, report)
    ledger = _qualified(schema, "schema_migrations")
    for version, description, migrate in MIGRATIONS:
        with conn.transaction():
            _lock(conn, schema)
            done = conn.execute(
                sql.SQL("SELECT 1 FROM {} WHERE version = %s").format(ledger), (version,)
            ).fetchone()
            if done:
                continue
            migrate(_Context(conn, settings, schema, report.mode, report))
            conn.execute(
                sql.SQL("INSERT INTO {} (version, description) VALUES (%s, %s)").format(ledger),
                (version, description),
            )
            report.migrations_applied.append(version)
            log.info("schema %s: applied migration %d (%s)", schema, version, description)
    report.merge(maintain_partitions(conn, settings, now))
    return report


def applied_versions(conn: psycopg.Connection, schema: str) -> list[int]:
    rows = conn.execute(
        sql.SQL("SELECT version FROM {} ORDER BY version").format(_qualified(validate_identifier(schema), "schema_migrations"))
    ).fetchall()
    return [r[0] for r in rows]


# ---------------------------------------------------------------------------
# Native partition maintenance
# ---------------------------------------------------------------------------


def list_partitions(conn: psycopg.Connection, schema: str, table: Table) -> dict[date, str]:
    """The daily partitions of ``table`` (by day), as named by this module."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent"
        " JOIN pg_namespace n ON n.oid = p.relnamespace"
        " WHERE n.nspname = %s AND p.relname = %s",
        (schema, table.name),
    ).fetchall()
    days: dict[date, str] = {}
    for (name,) in rows:
        match = _PARTITION_NAME.match(name)
        if match and match["table"] == table.name:
            days[datetime.strptime(match["day"], "%Y%m%d").date()] = name
    return days


def _create_day_partition(conn: psycopg.Connection, schema: str, table: Table, day: date) -> int:
    """Create the partition of ``day``; rows of that day already in DEFAULT move into it.

    (``CREATE TABLE ... PARTITION OF`` would fail when DEFAULT holds rows of
    the new range, so: create a standalone table, move the rows, attach.)
    Returns the number of rows moved.
    """
    name = partition_name(table, day)
    part, parent = _qualified(schema, name), _qualified(schema, table.name)
    default = _qualified(schema, default_partition_name(table))
    time_col = sql.Identifier(table.time_column)  # type: ignore[arg-type]
    low, high = sql.Literal(_day_start(day)), sql.Literal(_day_start(day + timedelta(days=1)))
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(part, parent))
    moved = conn.execute(
        sql.SQL(
            "WITH moved AS (DELETE FROM {default} WHERE {col} >= %s AND {col} < %s RETURNING *)"
            " INSERT INTO {part} SELECT * FROM moved"
        ).format(default=default, col=time_col, part=part),
        (_day_start(day), _day_start(day + timedelta(days=1))),
    ).rowcount
    conn.execute(
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(parent, part, low, high)
    )
    return max(moved, 0)


def _default_days(conn: psycopg.Connection, schema: str, table: Table, first: date, last: date) -> list[date]:
    """Days in [first, last] that have rows waiting in the DEFAULT partition."""
    rows = conn.execute(
        sql.SQL(
            "SELECT DISTINCT (date_trunc('day', {col} AT TIME ZONE 'UTC'))::date FROM {default}"
            " WHERE {col} >= %s AND {col} < %s"
        ).format(col=sql.Identifier(table.time_column), default=_qualified(schema, default_partition_name(table))),  # type: ignore[arg-type]
        (_day_start(first), _day_start(last + timedelta(days=1))),
    ).fetchall()
    return [r[0] for r in rows]


def maintain_partitions(conn: psycopg.Connection, settings: Settings, now: datetime | None = None) -> SchemaReport:
    """Native mode: create daily partitions from today to ``partitions_ahead_days``
    ahead (and for recent days with rows in DEFAULT), drop partitions whose whole
    day is older than ``retention_days``, and delete DEFAULT rows that old.
    TimescaleDB mode: nothing to do (its retention policy job drops chunks).

    Each table is handled in its own transaction under the schema's advisory
    lock with a short lock timeout; a table that is busy is skipped with a note
    and handled on the next call.
    """
    schema = validate_identifier(settings.db.schema)
    mode = storage_mode(conn, schema)
    report = SchemaReport(schema=schema, mode=mode or NATIVE)
    if mode != NATIVE:
        return report
    now_utc = _utc_now(now)
    today = now_utc.date()
    # A partition is dropped once its whole day is older than the retention.
    cutoff_day = today - timedelta(days=settings.retention_days)
    wanted_ahead = [today + timedelta(days=i) for i in range(settings.partitions_ahead_days + 1)]
    for table in _time_tables():
        try:
            with conn.transaction():
                _lock(conn, schema)
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(MAINTENANCE_LOCK_TIMEOUT)))
                existing = list_partitions(conn, schema, table)
                wanted = set(wanted_ahead)
                wanted.update(_default_days(conn, schema, table, cutoff_day, wanted_ahead[-1]))
                for day in sorted(wanted - existing.keys()):
                    report.rows_moved_from_default += _create_day_partition(conn, schema, table, day)
                    report.partitions_created.append(partition_name(table, day))
                for day, name in sorted(existing.items()):
                    if day < cutoff_day:
                        conn.execute(sql.SQL("DROP TABLE {}").format(_qualified(schema, name)))
                        report.partitions_dropped.append(name)
                expired = conn.execute(
                    sql.SQL("DELETE FROM {} WHERE {} < %s").format(
                        _qualified(schema, default_partition_name(table)),
                        sql.Identifier(table.time_column),  # type: ignore[arg-type]
                    ),
                    (_day_start(cutoff_day),),
                ).rowcount
                report.expired_default_rows += max(expired, 0)
        except psycopg.errors.LockNotAvailable:
            report.notes.append(f"{table.name}: busy, partition maintenance deferred")
            log.warning("schema %s: %s busy; partition maintenance deferred", schema, table.name)
    if report.partitions_created or report.partitions_dropped:
        log.info(
            "schema %s: partitions created %s, dropped %s", schema, report.partitions_created, report.partitions_dropped
        )
    return report
