"""PostgreSQL writer: per-table buffers flushed by binary COPY, with backpressure.

Callers ``await sink.write(TABLE, rows)`` (row tuples in contract column order,
see :mod:`streamer.sinks.rows`). Rows are appended to a per-table buffer; a
background task writes a table by ``COPY ... FROM STDIN (FORMAT BINARY)`` as
soon as it holds ``batch_write_size`` rows, and every ``flush_interval``
seconds otherwise. Tables with a primary key (``instruments``) are written by
``INSERT ... ON CONFLICT DO NOTHING`` instead.

Guarantees:

- **Bounded memory, backpressure.** When the buffers hold ``max_buffered_rows``
  rows, ``write`` waits until a flush makes room: a slow or unreachable
  database slows the feeds down rather than growing memory without limit.
  (The bound can be exceeded by at most one ``write`` call's rows: a frame's
  rows are never split.)
- **No silent loss.** A failed batch stays at the head of its buffer, in order;
  the sink reconnects with capped, jittered exponential backoff and retries.
  Each batch is one transaction, so a retry after a dropped connection does not
  duplicate rows (except if the connection dies during COMMIT itself, where
  PostgreSQL cannot tell us whether it committed: then the batch may be stored
  twice; never lost).
- **A bad row cannot wedge the sink.** If PostgreSQL (or the binary encoder)
  rejects a batch's *data*, the batch is bisected; the good rows are written
  and each rejected row is appended, with the error, to
  ``<data_dir>/rejected/<table>.jsonl`` and counted.
- Rows still unwritten when :meth:`close` gives up are appended to
  ``<data_dir>/spool/<table>.jsonl`` and counted (logged as an error).

Timestamps in rows are integer microseconds since the epoch;
:class:`MicrosTimestamptzDumper` encodes them for binary COPY with no
``datetime`` objects on the hot path (``datetime`` values are accepted too).
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

import orjson
import psycopg
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.pq import Format

from ..config import Settings
from ..contract import TABLES, Table
from ..errors import SinkError
from .schema import maintain_partitions

log = logging.getLogger(__name__)

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds
_ONE_US = timedelta(microseconds=1)
_pack_int8 = struct.Struct(">q").pack

#: Errors that mean "this data cannot be stored", as opposed to "the database is
#: unreachable": the batch is bisected to isolate the offending rows.
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.DataError,
    psycopg.IntegrityError,
    TypeError,
    ValueError,
    OverflowError,
    struct.error,
)


class MicrosTimestamptzDumper(Dumper):
    """Binary ``timestamptz`` from integer Unix microseconds (or a ``datetime``).

    PostgreSQL's binary timestamptz is int64 microseconds since 2000-01-01 UTC,
    so an integer needs one subtraction and one pack.
    """

    format = Format.BINARY
    oid = psycopg.adapters.types["timestamptz"].oid

    def dump(self, obj: Any) -> bytes:
        if obj.__class__ is int:
            return _pack_int8(obj - _PG_EPOCH_US)
        if isinstance(obj, datetime):
            if obj.tzinfo is None:
                raise ValueError(f"naive datetime {obj!r}: timestamps must be timezone-aware")
            return _pack_int8((obj - _PG_EPOCH) // _ONE_US)
        raise TypeError(f"timestamptz needs int microseconds or datetime, got {type(obj).__name__}")


class _CheckedIntDumper(Dumper):
    """Binary int2/int4 that refuses out-of-range values: psycopg's own binary
    dumpers wrap them silently (40000 would be stored as -25536 in a smallint)."""

    format = Format.BINARY
    _low = _high = 0
    _pack: Any = None

    def dump(self, obj: Any) -> bytes:
        if not self._low <= obj <= self._high:
            raise OverflowError(f"{obj!r} does not fit a {self._name}")
        return self._pack(obj)


class CheckedInt2Dumper(_CheckedIntDumper):
    oid = psycopg.adapters.types["int2"].oid
    _low, _high, _name, _pack = -(2**15), 2**15 - 1, "smallint", struct.Struct(">h").pack


class CheckedInt4Dumper(_CheckedIntDumper):
    oid = psycopg.adapters.types["int4"].oid
    _low, _high, _name, _pack = -(2**31), 2**31 - 1, "integer", struct.Struct(">i").pack


# Never instantiated: registering a dumper for a marker class installs it as the
# connection's by-OID binary dumper, which COPY uses after ``set_types``;
# ordinary queries keep choosing dumpers by Python type.
class _TimestampMarker:
    pass


class _Int2Marker:
    pass


class _Int4Marker:
    pass


def _backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter in [delay/2, delay]."""
    delay = min(cap, base * (2 ** min(attempt, 16)))
    return delay * (0.5 + random.random() / 2)


def _jsonable(row: Sequence[Any]) -> list:
    return [v if isinstance(v, (int, float, str, bool)) or v is None else str(v) for v in row]


class PostgresSink:
    """Asynchronous, buffered writer of contract rows to PostgreSQL.

    ``max_buffered_rows`` default: ``max(10 * data_buffer_size, 4 * batch_write_size)``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        flush_interval: float = 0.2,
        max_buffered_rows: int | None = None,
        reconnect_base_delay: float = 0.1,
        reconnect_max_delay: float = 5.0,
        maintenance_interval: float | None = 3600.0,
        connect_timeout: int = 10,
    ) -> None:
        self.settings = settings
        self.schema = settings.db.schema
        self.batch_size = settings.batch_write_size
        self.flush_interval = flush_interval
        self.max_buffered_rows = max_buffered_rows or max(10 * settings.data_buffer_size, 4 * settings.batch_write_size)
        self.reconnect_base_delay = reconnect_base_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.maintenance_interval = maintenance_interval
        self.connect_timeout = connect_timeout

        self._buffers: dict[str, list[tuple]] = {t.name: [] for t in TABLES}
        self._tables: dict[str, Table] = {t.name: t for t in TABLES}
        self._buffered = 0
        self._has_space = asyncio.Event()
        self._has_space.set()
        self._wake = asyncio.Event()
        self._io_lock = asyncio.Lock()
        self._conn: psycopg.AsyncConnection | None = None
        self._ever_connected = False
        self._task: asyncio.Task | None = None
        self._started = False
        self._closed = False
        self._statements: dict[str, sql.Composed] = {}
        self._last_maintenance = time.monotonic()

        # Counters (read them through stats()).
        self.rows_written: dict[str, int] = defaultdict(int)
        self.batches = 0
        self.write_errors = 0
        self.reconnects = 0
        self.rows_rejected = 0
        self.rows_spooled = 0
        self.backpressure_waits = 0
        self.last_flush_latency: float | None = None
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Connect (retrying with backoff until it works) and start the flusher."""
        if self._started:
            return
        self._started = True
        await self._ensure_connection()
        self._task = asyncio.create_task(self._run(), name="postgres-sink-flusher")

    async def close(self, timeout: float | None = 60.0) -> None:
        """Flush everything, then disconnect. Rows that cannot be written within
        ``timeout`` seconds are spooled to disk (never dropped)."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        self._wake.set()
        try:
            if self._task is not None:
                # Let the flusher finish the batch it is writing: cancelling a COPY
                # midway leaves the connection unusable for the final flush.
                await asyncio.wait_for(asyncio.shield(self._task), None if deadline is None else max(0.0, deadline - loop.time()))
            await asyncio.wait_for(self._flush_all(), None if deadline is None else max(0.0, deadline - loop.time()))
        except (asyncio.TimeoutError, TimeoutError):
            log.error("PostgreSQL unreachable at close: spooling %d unwritten rows to disk", self._buffered)
        finally:
            if self._task is not None and not self._task.done():
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
            self._spool_remaining()
            if self._conn is not None:
                try:
                    await self._conn.close()
                except Exception:  # closing a broken connection is best effort
                    pass
                self._conn = None
            self._has_space.set()  # release any writer still waiting

    async def __aenter__(self) -> "PostgresSink":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- writing -----------------------------------------------------------

    async def write(self, table: Table, rows: list[tuple]) -> None:
        """Queue ``rows`` for ``table``; waits while the buffers are full."""
        if self._closed:
            raise SinkError(f"PostgreSQL sink is closed; cannot write {len(rows)} {table.name} rows")
        if not rows:
            return
        buffer = self._buffers.get(table.name)
        if buffer is None or (self._tables[table.name] is not table and self._tables[table.name] != table):
            raise SinkError(f"unknown table {table.name!r}: not in the contract")
        if len(rows[0]) != len(table.columns):
            raise SinkError(f"{table.name} rows have {len(table.columns)} columns, got {len(rows[0])}")
        while self._buffered >= self.max_buffered_rows and not self._closed:
            self.backpressure_waits += 1
            self._has_space.clear()
            self._wake.set()
            await self._has_space.wait()
        buffer.extend(rows)
        self._buffered += len(rows)
        if len(buffer) >= self.batch_size:
            self._wake.set()

    async def flush(self) -> None:
        """Write every buffered row now (retrying through outages until done)."""
        await self._flush_all()

    @property
    def buffered_rows(self) -> int:
        return self._buffered

    @property
    def backend_pid(self) -> int | None:
        """PID of the server process serving the sink's connection (for operators and tests)."""
        conn = self._conn
        return None if conn is None or conn.closed else conn.info.backend_pid

    def stats(self) -> dict:
        return {
            "rows_written": dict(self.rows_written),
            "batches": self.batches,
            "write_errors": self.write_errors,
            "reconnects": self.reconnects,
            "rows_rejected": self.rows_rejected,
            "rows_spooled": self.rows_spooled,
            "backpressure_waits": self.backpressure_waits,
            "buffered_rows": self._buffered,
            "max_buffered_rows": self.max_buffered_rows,
            "last_flush_latency": self.last_flush_latency,
            "last_error": self.last_error,
        }

    # -- background flushing -------------------------------------------------

    async def _run(self) -> None:
        while not self._closed:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            except (asyncio.TimeoutError, TimeoutError):
                pass
            self._wake.clear()
            await self._flush_all()
            await self._maybe_maintain()

    async def _flush_all(self) -> None:
        async with self._io_lock:
            for name, buffer in self._buffers.items():
                while buffer:
                    await self._flush_batch(self._tables[name], buffer)

    async def _flush_batch(self, table: Table, buffer: list[tuple]) -> None:
        """Write the head of ``buffer`` (up to one batch), retrying until it is stored."""
        batch = buffer[: self.batch_size]
        attempt = 0
        while True:
            try:
                conn = await self._ensure_connection()
                started = time.perf_counter()
                await self._store(conn, table, batch)
                self.last_flush_latency = time.perf_counter() - started
                break
            except _DATA_ERRORS as exc:
                if self._conn is not None and not self._conn.broken:
                    await self._store_bisecting(table, batch, exc)
                    break
                await self._connection_failed(exc, attempt)
            except (psycopg.Error, OSError) as exc:
                await self._connection_failed(exc, attempt)
            attempt += 1
        # Remove exactly the rows just stored: writers may have appended meanwhile.
        del buffer[: len(batch)]
        self._release(len(batch))

    async def _connection_failed(self, exc: BaseException, attempt: int) -> None:
        self.write_errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # already broken; closing is best effort
                pass
        delay = _backoff(attempt, self.reconnect_base_delay, self.reconnect_max_delay)
        log.warning(
            "PostgreSQL write failed (%s); %d rows buffered, retrying in %.2f s", self.last_error, self._buffered, delay
        )
        await asyncio.sleep(delay)

    def _release(self, count: int) -> None:
        self._buffered -= count
        if self._buffered < self.max_buffered_rows:
            self._has_space.set()

    async def _ensure_connection(self) -> psycopg.AsyncConnection:
        attempt = 0
        while self._conn is None or self._conn.closed or self._conn.broken:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.settings.db.url(), autocommit=True, connect_timeout=self.connect_timeout,
                    application_name="coby-streamer",
                )
            except (psycopg.Error, OSError) as exc:
                self.write_errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                delay = _backoff(attempt, self.reconnect_base_delay, self.reconnect_max_delay)
                log.warning("cannot connect to %s (%s); retrying in %.2f s",
                            self.settings.db.safe_description(), self.last_error, delay)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            conn.adapters.register_dumper(_TimestampMarker, MicrosTimestamptzDumper)
            conn.adapters.register_dumper(_Int2Marker, CheckedInt2Dumper)
            conn.adapters.register_dumper(_Int4Marker, CheckedInt4Dumper)
            if self._ever_connected:
                self.reconnects += 1
                log.info("reconnected to %s", self.settings.db.safe_description())
            self._ever_connected = True
            self._conn = conn
        return self._conn

    # -- statements ------------------------------------------------------------

    def _copy_statement(self, table: Table) -> sql.Composed:
        statement = self._statements.get(table.name)
        if statement is None:
            statement = sql.SQL("COPY {}.{} ({}) FROM STDIN (FORMAT BINARY)").format(
                sql.Identifier(self.schema),
                sql.Identifier(table.name),
                sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names),
            )
            self._statements[table.name] = statement
        return statement

    def _insert_statement(self, table: Table) -> sql.Composed:
        key = f"insert:{table.name}"
        statement = self._statements.get(key)
        if statement is None:
            values = [
                sql.SQL("timestamptz 'epoch' + %s * interval '1 microsecond'") if c.type == "timestamp" else sql.SQL("%s")
                for c in table.columns
            ]
            statement = sql.SQL("INSERT INTO {}.{} ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
                sql.Identifier(self.schema),
                sql.Identifier(table.name),
                sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names),
                sql.SQL(", ").join(values),
            )
            self._statements[key] = statement
        return statement

    async def _store(self, conn: psycopg.AsyncConnection, table: Table, batch: list[tuple]) -> None:
        async with conn.transaction():
            async with conn.cursor() as cur:
                if table.primary_key:
                    params = [self._insert_params(table, row) for row in batch]
                    await cur.executemany(self._insert_statement(table), params)
                else:
                    async with cur.copy(self._copy_statement(table)) as copy:
                        copy.set_types([c.pg_type for c in table.columns])
                        for row in batch:
                            await copy.write_row(row)
        self.batches += 1
        self.rows_written[table.name] += len(batch)

    @staticmethod
    def _insert_params(table: Table, row: tuple) -> tuple:
        out = list(row)
        for i, column in enumerate(table.columns):
            value = out[i]
            if column.type == "timestamp" and isinstance(value, datetime):
                out[i] = (value - datetime(1970, 1, 1, tzinfo=timezone.utc)) // _ONE_US
        return tuple(out)

    async def _store_bisecting(self, table: Table, batch: list[tuple], first_error: BaseException) -> None:
        """Store what can be stored of a batch the database rejected; reject the rest row by row."""
        log.warning("%s batch of %d rows rejected (%s); isolating the bad rows",
                    table.name, len(batch), str(first_error).splitlines()[0][:200])
        pending: list[list[tuple]] = [batch]
        while pending:
            part = pending.pop()
            try:
                conn = await self._ensure_connection()
                await self._store(conn, table, part)
            except _DATA_ERRORS as exc:
                if len(part) == 1:
                    self._reject(table, part[0], exc)
                else:
                    middle = len(part) // 2
                    pending += [part[middle:], part[:middle]]  # pop() takes the first half next: order kept
            except (psycopg.Error, OSError) as exc:
                # The connection died mid-isolation: retry this part after a backoff.
                await self._connection_failed(exc, 0)
                pending.append(part)

    # -- rows that cannot be stored --------------------------------------------

    def _append_jsonl(self, folder: str, table: Table, records: list[dict]) -> Path:
        directory = self.settings.data_dir / folder
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{table.name}.jsonl"
        with path.open("ab") as fh:
            for record in records:
                fh.write(orjson.dumps(record) + b"\n")
        return path

    def _reject(self, table: Table, row: tuple, exc: BaseException) -> None:
        self.rows_rejected += 1
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        path = self._append_jsonl(
            "rejected", table, [{"table": table.name, "columns": table.column_names, "row": _jsonable(row), "error": reason}]
        )
        log.error("%s row rejected by PostgreSQL (%s); kept in %s", table.name, reason, path)

    def _spool_remaining(self) -> None:
        for name, buffer in self._buffers.items():
            if not buffer:
                continue
            table = self._tables[name]
            path = self._append_jsonl(
                "spool", table, [{"table": name, "columns": table.column_names, "row": _jsonable(r)} for r in buffer]
            )
            self.rows_spooled += len(buffer)
            log.error("%d %s rows could not be written to PostgreSQL; spooled to %s", len(buffer), name, path)
            self._release(len(buffer))
            buffer.clear()

    # -- partition maintenance -------------------------------------------------

    async def _maybe_maintain(self) -> None:
        if self.maintenance_interval is None:
            return
        if time.monotonic() - self._last_maintenance < self.maintenance_interval:
            return
        self._last_maintenance = time.monotonic()
        try:
            report = await asyncio.to_thread(self._maintain_sync)
            if report.partitions_created or report.partitions_dropped:
                log.info("partition maintenance: %s", report)
        except Exception as exc:  # maintenance retries next interval; writes go to DEFAULT meanwhile
            log.warning("partition maintenance failed: %s", str(exc).splitlines()[0][:300])

    def _maintain_sync(self):
        with psycopg.connect(self.settings.db.url(), autocommit=True, connect_timeout=self.connect_timeout) as conn:
            return maintain_partitions(conn, self.settings)
