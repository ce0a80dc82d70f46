"""Floors: what the same work costs with everything but one step taken away.

* ``parse``: the capture's frames through ``orjson.loads`` alone (the JSON
  parser COBY uses): the fastest any Python consumer of these frames can go.
* ``processor``: the journal records of the capture through
  :class:`~streamer.processor.FeedProcessor` alone (parse, map, book sync
  with checksums, row building; no sockets, no journal, no sinks).
* ``copy``: ``book_updates`` rows, as the processor makes them from the
  capture, through a bare binary COPY (psycopg, the sink's dumpers, batches
  of ``BATCH_WRITE_SIZE`` rows, one transaction each) into a plain table of
  the same columns: the database floor for COBY's row shape.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import psycopg
from psycopg import sql

from ...capture.journal import journal_records
from ...capture.reader import load_capture, payload
from ...capture.replay import protocol_of
from ...config import Settings
from ...contract import BOOK_UPDATES
from ...exchanges.registry import get_mapper
from ...journal.records import Kind, Record
from ...processor import FeedProcessor
from ...sinks.postgres import CheckedInt2Dumper, CheckedInt4Dumper, MicrosTimestamptzDumper
from ...sinks.postgres import _Int2Marker, _Int4Marker, _TimestampMarker

FLOOR_TABLE = "copy_floor_book_updates"


def capture_frames(path: Path) -> list[str | bytes]:
    """Every received frame of a capture, as the socket delivered it."""
    return [payload(rec) for rec in load_capture(path).recv_records()]


def parse_rate(frames: list[str | bytes], loops: int) -> float:
    """Frames per second through ``orjson.loads`` alone."""
    loads = orjson.loads
    started = time.perf_counter()
    for _ in range(loops):
        for frame in frames:
            loads(frame)
    return loops * len(frames) / (time.perf_counter() - started)


def capture_records(path: Path) -> tuple[str, list[str], list[Record]]:
    """(protocol, native symbols, the capture as the journal holds it: connect, frames, REST snapshots)."""
    capture = load_capture(path)
    protocol = protocol_of(capture)
    natives, records = journal_records(capture, protocol)
    return protocol, natives, records


def processor_rate(path: Path, loops: int) -> tuple[float, list[tuple]]:
    """Frames per second through the processor alone (each loop a fresh connect), and its book_updates rows."""
    protocol, natives, records = capture_records(path)
    processor = FeedProcessor(protocol, get_mapper(protocol), natives)
    frames = sum(1 for r in records if r.kind in (Kind.WS_TEXT, Kind.WS_BINARY))
    rows: list[tuple] = []
    started = time.perf_counter()
    for _ in range(loops):
        for record in records:
            out = processor.process(record)
            produced = out.rows.get(BOOK_UPDATES)
            if produced:
                rows.extend(produced)
    elapsed = time.perf_counter() - started
    return loops * frames / elapsed, rows


def copy_rate(settings: Settings, rows: list[tuple]) -> float:
    """Rows per second of ``rows`` through a bare binary COPY into a plain table of ``book_updates``' columns."""
    schema = settings.db.schema
    table = sql.Identifier(schema, FLOOR_TABLE)
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.pg_type)) for c in BOOK_UPDATES.columns
    )
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        table, sql.SQL(", ").join(sql.Identifier(c) for c in BOOK_UPDATES.column_names)
    )
    types = [c.pg_type for c in BOOK_UPDATES.columns]
    batch = settings.batch_write_size
    with psycopg.connect(settings.db.url(), autocommit=True) as conn:
        conn.adapters.register_dumper(_TimestampMarker, MicrosTimestamptzDumper)
        conn.adapters.register_dumper(_Int2Marker, CheckedInt2Dumper)
        conn.adapters.register_dumper(_Int4Marker, CheckedInt4Dumper)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(table, columns))
        try:
            started = time.perf_counter()
            for i in range(0, len(rows), batch):
                with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
                    copy.set_types(types)
                    for row in rows[i:i + batch]:
                        copy.write_row(row)
            elapsed = time.perf_counter() - started
        finally:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    return len(rows) / elapsed
