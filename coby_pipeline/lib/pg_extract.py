"""Read one hour of a raw table out of PostgreSQL into Arrow, fast.

The hour is streamed with ``COPY (SELECT ... WHERE local_ts >= %s AND
local_ts < %s) TO STDOUT`` and parsed by Arrow's C++ CSV reader in record
batches, so no Python object is ever built per row. Measured on a million
``book_updates`` rows: about 1.8 s this way, against 5-7 s for binary COPY
decoded by ``copy.rows()`` (one Python tuple per row). Binary COPY parsed
with numpy would be a little faster still, but cannot carry free-text columns
such as ``trade_id``.

Exactness: timestamps travel as integer microseconds since the epoch
(computed in SQL, never through a float), and doubles are printed by
PostgreSQL in their shortest exactly-round-tripping form
(``extra_float_digits`` > 0), so the Arrow values equal the stored ones bit
for bit. ``NULL`` (unquoted empty field) and ``''`` (quoted) stay distinct.
"""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Iterator

import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg import sql

from streamer.contract import FEED_EVENTS, STOPPED, Table, validate_identifier

from .hours import HourWindow
from .quality import CONNECTION_DOWN, CONNECTION_UP, STATE_DOWN, STATE_STOPPED, STATE_UP

#: Bytes handed to Arrow's CSV reader per block (one record batch each).
_BLOCK_SIZE = 8 << 20


def _column_expression(table: Table, name: str) -> sql.Composable:
    """SQL for one column as it goes into the CSV stream."""
    ident = sql.Identifier(name)
    if table.column(name).type != "timestamp":
        return ident
    # Whole seconds plus the microsecond part, both exact integers on every
    # PostgreSQL version (EXTRACT(EPOCH ...) is a float before version 14).
    return sql.SQL(
        "(EXTRACT(EPOCH FROM date_trunc('second', {c}))::bigint * 1000000"
        " + mod(EXTRACT(MICROSECONDS FROM {c})::bigint, 1000000))"
    ).format(c=ident)


def _csv_type(table: Table, name: str) -> pa.DataType:
    column = table.column(name)
    return pa.int64() if column.type == "timestamp" else column.arrow_type


class _CopyReader(io.RawIOBase):
    """A readable file over a running ``COPY TO STDOUT``, for Arrow's reader."""

    def __init__(self, chunks: Iterator[memoryview | bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def hour_query(schema: str, table: Table, columns: list[str] | None = None) -> sql.Composed:
    """``SELECT <columns> FROM schema.table WHERE <time> >= %s AND <time> < %s``."""
    if table.time_column is None:
        raise ValueError(f"table {table.name} has no time column to select an hour by")
    names = columns or table.column_names
    return sql.SQL("SELECT {cols} FROM {schema}.{table} WHERE {ts} >= %s AND {ts} < %s").format(
        cols=sql.SQL(", ").join(_column_expression(table, n) for n in names),
        schema=sql.Identifier(validate_identifier(schema)),
        table=sql.Identifier(table.name),
        ts=sql.Identifier(table.time_column),
    )


def read_hour(
    conn: psycopg.Connection,
    schema: str,
    table: Table,
    window: HourWindow,
    columns: list[str] | None = None,
) -> pa.Table:
    """All rows of ``table`` with ``window.start <= local_ts < window.end``.

    Returns an Arrow table with the contract's schema (``table.arrow_schema()``,
    or the named ``columns`` of it), in no particular row order.
    """
    names = columns or table.column_names
    schema_out = pa.schema([table.arrow_schema().field(n) for n in names], metadata={"coby.table": table.name})
    copy_sql = sql.SQL("COPY ({}) TO STDOUT (FORMAT CSV)").format(hour_query(schema, table, names))
    convert = pa_csv.ConvertOptions(
        column_types={n: _csv_type(table, n) for n in names},
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
        true_values=["t"],
        false_values=["f"],
    )
    read_options = pa_csv.ReadOptions(column_names=names, block_size=_BLOCK_SIZE, use_threads=True)
    # Free text (trade ids, details) may in principle hold newlines.
    # An empty line is a row of NULLs when a single column is read: keep it.
    parse_options = pa_csv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False)
    with conn.transaction():
        # Local to this transaction: the caller's session settings stay as they were.
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        conn.execute("SET LOCAL extra_float_digits = 3")
        with conn.cursor().copy(copy_sql, (window.start, window.end)) as copy:
            stream = io.BufferedReader(_CopyReader(iter(copy)), buffer_size=1 << 20)
            try:
                reader = pa_csv.open_csv(
                    stream, read_options=read_options, parse_options=parse_options, convert_options=convert
                )
                raw = reader.read_all()
            except pa.ArrowInvalid as exc:
                if "Empty CSV file" not in str(exc):
                    raise
                raw = None
            # Drain whatever Arrow did not ask for so the COPY ends cleanly.
            for _ in copy:
                pass
    if raw is None:
        return schema_out.empty_table()
    arrays = [raw.column(n).cast(schema_out.field(n).type) for n in names]
    return pa.Table.from_arrays(arrays, schema=schema_out)


def count_hour(conn: psycopg.Connection, schema: str, table: Table, window: HourWindow) -> dict[tuple[str, str], int]:
    """Rows per (exchange, symbol) of ``table`` in the hour."""
    query = sql.SQL(
        "SELECT exchange, symbol, count(*) FROM {schema}.{table} WHERE {ts} >= %s AND {ts} < %s GROUP BY 1, 2"
    ).format(
        schema=sql.Identifier(validate_identifier(schema)),
        table=sql.Identifier(table.name),
        ts=sql.Identifier(table.time_column or "local_ts"),
    )
    rows = conn.execute(query, (window.start, window.end)).fetchall()
    return {(exchange, symbol): count for exchange, symbol, count in rows}


def connection_state_before(
    conn: psycopg.Connection,
    schema: str,
    window: HourWindow,
    *,
    lookback: timedelta = timedelta(days=7),
    up: str = CONNECTION_UP,
    down: tuple[str, ...] = CONNECTION_DOWN,
) -> dict[tuple[str, str], str]:
    """Each connection's state when the hour began, by (exchange, label):
    :data:`~coby_pipeline.lib.quality.STATE_UP`, ``STATE_DOWN``, or
    ``STATE_STOPPED`` (the streamer stopped it on purpose).

    The label is the connection events' ``symbol``: ``''`` for an exchange on
    one connection, ``'@1'``, ``'@2'``, ... for the shards of a split one.
    Taken from the last connection event per connection in the ``lookback``
    before the hour (bounded so the query touches few partitions).
    """
    query = sql.SQL(
        "SELECT DISTINCT ON (exchange, symbol) exchange, symbol, event, detail FROM {schema}.{table}"
        " WHERE local_ts >= %s AND local_ts < %s AND event = ANY(%s)"
        " ORDER BY exchange, symbol, local_ts DESC"
    ).format(schema=sql.Identifier(validate_identifier(schema)), table=sql.Identifier(FEED_EVENTS.name))
    rows = conn.execute(query, (window.start - lookback, window.start, [up, *down])).fetchall()
    return {(exchange, label): STATE_UP if event == up else STATE_STOPPED if detail == STOPPED else STATE_DOWN
            for exchange, label, event, detail in rows}
