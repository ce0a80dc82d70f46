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
import struct
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import orjson
import psycopg
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.pq import Format

from ..connection.backoff import backoff_delay
from ..connection.clock import now_us
from ..config import Settings
from ..contract import INGEST_CHECKPOINTS, TABLES, Table
from ..errors import SinkError
from ..secrets import describe_error
from .schema import maintain_partitions

if TYPE_CHECKING:
    from ..connection.ws import TurnHint

log = logging.getLogger(__name__)

BOOK_UPDATES_NAME = "book_updates"

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

    Every level row of a frame holds the same two timestamp objects (the
    frame's receipt and exchange times), and COPY encodes them row after row:
    the last two integers encoded are kept with their bytes, and found again
    by identity (an ``int`` is immutable, so the same object is the same value).
    """

    format = Format.BINARY
    oid = psycopg.adapters.types["timestamptz"].oid
    _recent: Any = None
    _recent_bytes = b""
    _older: Any = None
    _older_bytes = b""

    def dump(self, obj: Any) -> bytes:
        if obj is self._recent:
            return self._recent_bytes
        if obj is self._older:
            return self._older_bytes
        if obj.__class__ is int:
            data = _pack_int8(obj - _PG_EPOCH_US)
            self._older, self._older_bytes = self._recent, self._recent_bytes
            self._recent, self._recent_bytes = obj, data
            return data
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



def _jsonable(row: Sequence[Any]) -> list:
    return [v if isinstance(v, (int, float, str, bool)) or v is None else str(v) for v in row]


#: Rows formatted for COPY between two yields to the event loop.
COPY_YIELD_ROWS = 500
#: Rows formatted between two looks at whether the turn hint's work is due.
COPY_CHECK_ROWS = 100


async def _write_rows(copy, rows: list[tuple], hint: TurnHint | None = None) -> None:
    """Feed ``rows`` to a COPY, yielding to the event loop every ``COPY_YIELD_ROWS``,
    and sooner (within ``COPY_CHECK_ROWS``) once ``hint``'s work falls due.

    Formatting a row runs in this process; a batch of thousands would hold the
    loop for milliseconds, and the feed and the Redis flush (the live cache's
    latency) wait meanwhile. Yielding more often for every batch would cost
    throughput (the COPY ends later and the feed waits for room), so the
    finer step is taken only when the live cache's write is waiting.

    Rows are encoded by the copy's formatter, which is what ``copy.write_row``
    does, without a coroutine per row (a third of the per-row cost); it hands
    back a block of encoded rows every 32 KiB or so, which goes out by
    ``copy.write``. The formatter is not in psycopg's documented API, so
    without one the rows go through ``copy.write_row``.
    """
    formatter = getattr(copy, "formatter", None)
    write_chunk = _encode_chunk if formatter is not None else _write_chunk
    since_yield = 0
    for start in range(0, len(rows), COPY_CHECK_ROWS):
        await write_chunk(copy, rows[start:start + COPY_CHECK_ROWS])
        since_yield += COPY_CHECK_ROWS
        if hint is not None and now_us() >= hint.due_us:
            hint.release()  # the live cache's write runs at this yield
        elif since_yield < COPY_YIELD_ROWS:
            continue
        await asyncio.sleep(0)
        since_yield = 0


async def _encode_chunk(copy, rows: list[tuple]) -> None:
    encode_row, write = copy.formatter.write_row, copy.write
    for row in rows:
        block = encode_row(row)
        if block:
            await write(block)


async def _write_chunk(copy, rows: list[tuple]) -> None:
    for row in rows:
        await copy.write_row(row)


class RecoveryInterrupted(SinkError):
    """A spill dropped rows a recovery had buffered: the recovery starts over."""


def read_checkpoints_sql(schema: str) -> sql.Composed:
    """``(stream, seq)`` of every journal checkpoint stored in ``schema``."""
    return sql.SQL("SELECT stream, seq FROM {}.{}").format(
        sql.Identifier(schema), sql.Identifier(INGEST_CHECKPOINTS.name)
    )


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
        # Rows of journaled streams (see accept()): written with their checkpoints.
        self._stream_buffers: dict[str, list[tuple]] = {t.name: [] for t in TABLES}
        self._marks: dict[str, int] = {}  # stream -> last journal seq whose rows are buffered
        self._committed: dict[str, int] = {}  # stream -> checkpoint stored in PostgreSQL
        self._spilled: set[str] = set()  # streams whose rows recovery re-derives from the journal
        self.commit_listeners: list[Callable[[str, int], None]] = []
        #: Called before each transaction that stores checkpoints: journals write
        #: what they have collected, so no checkpoint names an unwritten record.
        self.before_checkpoint: list[Callable[[], None]] = []
        self._tables: dict[str, Table] = {t.name: t for t in TABLES}
        self._buffered = 0
        self._has_space = asyncio.Event()
        self._has_space.set()
        # Set while the buffers are below half of max_buffered_rows (see wait_for_room).
        self._has_room = asyncio.Event()
        self._has_room.set()
        #: True from a failed write until the next successful one.
        self.failing = False
        # Rows of the transaction being written (counted in _buffered until it commits).
        self._in_flight = 0
        #: Rows a feed may add while a write is in flight before it waits for the
        #: database (see wait_for_room): two batches keep the next write ready and
        #: the database busy while the feed works, with memory far below the limit.
        self.room_rows = min(self.max_buffered_rows // 2, 2 * self.batch_size)
        self._wake = asyncio.Event()
        self._io_lock = asyncio.Lock()
        self._conn: psycopg.AsyncConnection | None = None
        self._ever_connected = False
        self._task: asyncio.Task | None = None
        self._started = False
        self._closed = False
        self._statements: dict[str, sql.Composed] = {}
        self._last_maintenance = time.monotonic()
        #: Work that waits for the event loop while a COPY formats rows (the
        #: live cache's write, set by the streamer): a COPY yields once it is due.
        self.turn_hint: TurnHint | None = None

        # Counters (read them through stats()).
        self.rows_written: dict[str, int] = defaultdict(int)
        self.batches = 0
        self.write_errors = 0
        self.reconnects = 0
        self.rows_rejected = 0
        self.rows_spooled = 0
        self.backpressure_waits = 0
        self.spills = 0
        #: Bumped by every spill: a recovery that started before it must start over.
        self.spill_generation = 0
        self.last_flush_latency: float | None = None
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Connect (retrying with backoff until it works) and start the flusher."""
        if self._started:
            return
        self._started = True
        conn = await self._ensure_connection()
        self._committed.update(await self._read_checkpoints(conn))
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
            "spills": self.spills,
            "spilled_streams": sorted(self._spilled),
            "checkpoints": dict(self._committed),
            "buffered_rows": self._buffered,
            "max_buffered_rows": self.max_buffered_rows,
            "last_flush_latency": self.last_flush_latency,
            "last_error": self.last_error,
        }

    # -- journaled streams ---------------------------------------------------
    #
    # A feed hands over the rows of each journal record at once with accept();
    # they are written in ONE transaction with the stream's checkpoint (the last
    # record whose rows are all stored). Re-processing the journal after that
    # checkpoint therefore never duplicates a row and never misses one.

    def checkpoint(self, stream: str) -> int | None:
        """Last journal record of ``stream`` whose rows PostgreSQL has."""
        return self._committed.get(stream)

    def is_spilled(self, stream: str) -> bool:
        return stream in self._spilled

    def spill(self, stream: str) -> None:
        """Stop taking ``stream``'s live rows: recovery re-derives them from the
        journal after the checkpoint (used at start-up after a crash)."""
        self._spilled.add(stream)

    def resume(self, stream: str) -> None:
        """Recovery has caught up with the live feed: take its rows again."""
        self._spilled.discard(stream)

    def accept(self, stream: str, seq: int, rows: Mapping[Table, list[tuple]]) -> bool:
        """Buffer one journal record's rows. Never waits, so the feed keeps
        receiving whatever the database does. Returns False when the stream is
        spilled: memory is full (the database is down or slow), so its rows
        are dropped here and re-derived from the journal when it is back."""
        if stream in self._spilled:
            return False
        self._append_stream_rows(stream, seq, rows)
        if self._buffered > self.max_buffered_rows:
            self._spill_buffers()
            return False
        return True

    async def settled_checkpoint(self, stream: str) -> int | None:
        """The checkpoint once no write is in flight (a flush running at a spill
        may still commit rows of the stream: recovery must start after them)."""
        async with self._io_lock:
            return self._committed.get(stream)

    async def accept_recovered(
        self, stream: str, seq: int, rows: Mapping[Table, list[tuple]], generation: int
    ) -> None:
        """Buffer rows re-derived from the journal, waiting while memory is half full.
        Raises RecoveryInterrupted when a spill dropped the buffers since ``generation``."""
        while self._buffered >= self.max_buffered_rows // 2 and not self._closed:
            self._wake.set()
            self._has_space.clear()
            await self._has_space.wait()
        if generation != self.spill_generation:
            raise RecoveryInterrupted(f"{stream}: buffers spilled during recovery")
        self._append_stream_rows(stream, seq, rows)

    def crowded(self) -> bool:
        """The next write's rows are ready (``room_rows`` of them, besides the
        write in flight) and the database is healthy."""
        return self._buffered - self._in_flight >= self.room_rows and not self.failing and not self._closed

    async def wait_for_room(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds until the sink has taken the waiting rows.

        A feed calls this when :meth:`crowded`: the database is up but slower
        than the exchange, and the sink only gets to write while the feed
        awaits. Throttling reception lets the rows reach the database instead
        of spilling them to be re-derived later (which costs the processing
        twice). A database that is down fails its writes, stops being
        :meth:`crowded`, and the feed never waits on it.
        """
        self._has_room.clear()
        self._wake.set()
        try:
            await asyncio.wait_for(self._has_room.wait(), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            pass

    def _append_stream_rows(self, stream: str, seq: int, rows: Mapping[Table, list[tuple]]) -> None:
        count = 0
        buffers = self._stream_buffers
        for table, table_rows in rows.items():
            if table_rows:
                buffers[table.name].extend(table_rows)
                count += len(table_rows)
        self._buffered += count
        self._marks[stream] = seq
        if count and len(buffers[BOOK_UPDATES_NAME]) >= self.batch_size:
            self._wake.set()

    def _spill_buffers(self) -> None:
        dropped = sum(len(b) for b in self._stream_buffers.values())
        self._spilled.update(self._marks)
        log.error(
            "PostgreSQL is not keeping up: %d buffered rows of %s dropped from memory; "
            "they will be re-derived from the journal when it is back", dropped, sorted(self._marks),
        )
        self.spills += 1
        self.spill_generation += 1
        self._stream_buffers = {t.name: [] for t in TABLES}
        self._marks = {}
        self._release(dropped)

    async def _flush_streams(self) -> None:
        if not self._marks:
            return
        for hook in self.before_checkpoint:
            hook()
        buffers, marks = self._stream_buffers, self._marks
        self._stream_buffers, self._marks = {t.name: [] for t in TABLES}, {}
        count = sum(len(b) for b in buffers.values())
        self._in_flight = count
        self._has_room.set()  # the feed may gather the next transaction's rows meanwhile
        attempt = 0
        while True:
            try:
                conn = await self._ensure_connection()
                if attempt and await self._committed_already(conn, marks):
                    break  # the connection died after COMMIT: nothing to redo
                started = time.perf_counter()
                async with conn.transaction():
                    async with conn.cursor() as cur:
                        for name, rows in buffers.items():
                            if rows:
                                await self._store_rows(cur, self._tables[name], rows)
                        await self._store_checkpoints(cur, marks)
                self.last_flush_latency = time.perf_counter() - started
                self.batches += 1
                self.failing = False
                for name, rows in buffers.items():
                    self.rows_written[name] += len(rows)
                break
            except _DATA_ERRORS as exc:
                if self._conn is None or self._conn.broken:
                    await self._connection_failed(exc, attempt)
                else:
                    # A row the database refuses: isolate it, store the rest, then the checkpoint.
                    for name, rows in buffers.items():
                        if rows:
                            await self._store_bisecting(self._tables[name], rows, exc)
                    conn = await self._ensure_connection()
                    async with conn.transaction():
                        async with conn.cursor() as cur:
                            await self._store_checkpoints(cur, marks)
                    break
            except (psycopg.Error, OSError) as exc:
                await self._connection_failed(exc, attempt)
            attempt += 1
        self._committed.update(marks)
        self._in_flight = 0
        self._release(count)
        for stream, seq in marks.items():
            for listener in self.commit_listeners:
                listener(stream, seq)

    async def _store_rows(self, cur, table: Table, rows: list[tuple]) -> None:
        if table.primary_key:
            await cur.executemany(self._insert_statement(table), [self._insert_params(table, r) for r in rows])
            return
        for start in range(0, len(rows), self.batch_size):
            async with cur.copy(self._copy_statement(table)) as copy:
                copy.set_types([c.pg_type for c in table.columns])
                await _write_rows(copy, rows[start : start + self.batch_size], self.turn_hint)

    async def _store_checkpoints(self, cur, marks: Mapping[str, int]) -> None:
        statement = sql.SQL(
            "INSERT INTO {}.{} (stream, seq, updated_at) VALUES (%s, %s, now()) "
            "ON CONFLICT (stream) DO UPDATE SET seq = EXCLUDED.seq, updated_at = EXCLUDED.updated_at"
        ).format(sql.Identifier(self.schema), sql.Identifier(INGEST_CHECKPOINTS.name))
        await cur.executemany(statement, list(marks.items()))

    async def _read_checkpoints(self, conn: psycopg.AsyncConnection) -> dict[str, int]:
        try:
            async with conn.cursor() as cur:
                await cur.execute(read_checkpoints_sql(self.schema))
                return {stream: seq for stream, seq in await cur.fetchall()}
        except psycopg.errors.UndefinedTable:
            return {}

    async def _committed_already(self, conn: psycopg.AsyncConnection, marks: Mapping[str, int]) -> bool:
        stored = await self._read_checkpoints(conn)
        return all(stored.get(stream, -1) >= seq for stream, seq in marks.items())

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
            await self._flush_streams()
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
        self.failing = True
        self._has_room.set()  # nobody waits on a database that is down
        self.last_error = describe_error(exc)
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # already broken; closing is best effort
                pass
        delay = backoff_delay(attempt, self.reconnect_base_delay, self.reconnect_max_delay)
        log.warning(
            "PostgreSQL write failed (%s); %d rows buffered, retrying in %.2f s", self.last_error, self._buffered, delay
        )
        await asyncio.sleep(delay)

    def _release(self, count: int) -> None:
        self._buffered -= count
        if self._buffered < self.max_buffered_rows:
            self._has_space.set()
        if self._buffered - self._in_flight < self.room_rows:
            self._has_room.set()

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
                self.last_error = describe_error(exc)
                delay = backoff_delay(attempt, self.reconnect_base_delay, self.reconnect_max_delay)
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
                        await _write_rows(copy, batch, self.turn_hint)
        self.batches += 1
        self.failing = False
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
        reason = describe_error(exc, limit=500)
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
            log.warning("partition maintenance failed: %s", describe_error(exc))

    def _maintain_sync(self):
        with psycopg.connect(self.settings.db.url(), autocommit=True, connect_timeout=self.connect_timeout) as conn:
            return maintain_partitions(conn, self.settings)
