"""What the journal records: everything a feed's output depends on.

Re-processing the records from a base record reproduces the feed's output
exactly, because every input to the feed is here in order with its receive
time: WebSocket frames, REST bodies, connects and disconnects, the periodic
snapshot ticks, and local events such as memory alarms.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum


class Kind(IntEnum):
    WS_TEXT = 1
    WS_BINARY = 2
    #: A REST book snapshot. ``meta`` is the native symbol.
    HTTP = 3
    #: A new connection: every book starts over. ``meta`` is the URL; the payload
    #: is JSON: the subscribed native symbols and the exchange's instrument
    #: metadata (REST body, "" when it has none).
    CONNECT = 4
    #: The connection ended. ``meta`` is the reason.
    DISCONNECT = 5
    #: Time to write a periodic book snapshot of every synced book. ``meta`` is
    #: "" (every book) or "start:stop": that slice of the books in subscription
    #: order (see :func:`tick_parts`).
    SNAPSHOT_TICK = 6
    #: The whole feed state (books, sync state, mapper state), pickled: a base
    #: from which re-processing can start without the records before it.
    STATE = 7
    #: A feed event raised locally (memory alarm, spool alarm); ``payload`` is JSON.
    LOCAL_EVENT = 8


#: Books per snapshot-tick record: a feed with more journals one tick in parts.
TICK_BOOKS = 100


def tick_parts(books: int, per_part: int = TICK_BOOKS) -> list[str]:
    """The ``meta`` of each SNAPSHOT_TICK record of one tick over ``books`` books."""
    if books <= per_part:
        return [""]
    return [f"{start}:{start + per_part}" for start in range(0, books, per_part)]


def tick_part(meta: str) -> tuple[int, int]:
    """``"start:stop"`` -> (start, stop); ValueError for anything else."""
    start, sep, stop = meta.partition(":")
    if not (sep and start.isdigit() and stop.isdigit()) or int(start) >= int(stop):
        raise ValueError(f"snapshot tick part must be 'start:stop', got {meta!r}")
    return int(start), int(stop)


@dataclass(slots=True)
class Record:
    seq: int
    local_ts: int
    kind: Kind
    meta: str
    payload: bytes

    def text(self) -> str:
        return self.payload.decode("utf-8")


# length of (meta + payload), crc32 of everything after the crc, seq, local_ts, kind, meta length
HEADER = struct.Struct(">IIQqBH")
MAX_META = 0xFFFF


def encode(record: Record) -> bytes:
    meta = record.meta.encode("utf-8")
    if len(meta) > MAX_META:
        meta = meta[:MAX_META]
    body = meta + record.payload
    rest = struct.pack(">QqBH", record.seq, record.local_ts, int(record.kind), len(meta)) + body
    return struct.pack(">II", len(body), zlib.crc32(rest)) + rest


class CorruptRecord(Exception):
    """A record whose length or checksum does not hold (a torn write at a crash)."""


def decode_from(buffer: memoryview, offset: int) -> tuple[Record, int]:
    """Decode the record at ``offset``; returns it and the next offset."""
    if len(buffer) - offset < HEADER.size:
        raise CorruptRecord("short header")
    length, crc, seq, local_ts, kind, meta_len = HEADER.unpack_from(buffer, offset)
    end = offset + HEADER.size + length
    if end > len(buffer) or meta_len > length:
        raise CorruptRecord("short record")
    if zlib.crc32(buffer[offset + 8 : end]) != crc:
        raise CorruptRecord("checksum mismatch")
    start = offset + HEADER.size
    meta = bytes(buffer[start : start + meta_len]).decode("utf-8")
    payload = bytes(buffer[start + meta_len : end])
    try:
        kind_value = Kind(kind)
    except ValueError:
        raise CorruptRecord(f"unknown record kind {kind}") from None
    return Record(seq, local_ts, kind_value, meta, payload), end
