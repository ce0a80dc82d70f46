"""An append-only, segmented journal on local disk, one per exchange feed.

Layout: ``<dir>/<first seq, 20 digits>.jnl`` segment files. Each record is a
header (payload length, CRC32, sequence number, receive time, kind, meta
length) followed by its bytes (:mod:`streamer.journal.records`).

- **Append before processing, write in chunks.** :meth:`Journal.append`
  encodes the record and, inside a running event loop, collects it in memory;
  the collected records go to the file (opened with ``O_APPEND``) with one
  ``write`` when ``write_bytes`` have gathered, ``write_interval`` seconds
  after the first of them, and whenever :meth:`flush` is called, which the
  PostgreSQL sink does before every transaction that stores a checkpoint
  (so a checkpoint never names a record the journal does not hold). One
  ``write`` per frame cost more than the rest of journaling together. A
  crash of the process (kill -9) can take only the records of the last
  ``write_interval``, which it also takes from the socket: they count as
  part of the gap recorded at restart. Outside an event loop every record is
  written at once. ``fsync`` runs at most every ``fsync_interval`` seconds,
  bounding what a power loss can take.
- **Torn tails are cut.** A crash can leave a half-written last record; on
  open, the last segment is truncated at the first record whose length or
  checksum does not hold.
- **Bounded.** :meth:`reclaim` deletes whole segments before a base sequence
  number once PostgreSQL has everything they hold; ``budget_bytes`` is the
  size the owner keeps it under (see :class:`streamer.durability.Durability`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Iterator

from .records import CorruptRecord, Kind, Record, decode_from, encode

log = logging.getLogger(__name__)

SUFFIX = ".jnl"


def _fsync_quietly(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:  # the descriptor was closed meanwhile (segment switch); that fsync'd it
        log.debug("journal fsync skipped: %s", exc)


def _segments(directory: Path) -> list[tuple[int, Path]]:
    """``(first seq, path)`` of every segment in ``directory``, oldest first."""
    found = []
    for path in Path(directory).glob(f"*{SUFFIX}"):
        try:
            found.append((int(path.stem), path))
        except ValueError:
            continue
    return sorted(found)


def _whole_records(data: bytes) -> tuple[int | None, int, CorruptRecord | None]:
    """Of a segment's bytes: the last whole record's seq (None: no record), the
    bytes the whole records take, and the error where a torn tail begins."""
    view = memoryview(data)
    offset, last = 0, None
    while offset < len(data):
        try:
            record, end = decode_from(view, offset)
        except CorruptRecord as exc:
            return last, offset, exc
        last, offset = record.seq, end
    return last, offset, None


def last_seq(directory: Path) -> int:
    """Sequence number of the last whole record in a journal directory (0: none),
    read without opening the journal for writing (nothing is created or cut)."""
    for _first, path in reversed(_segments(directory)):
        last, _size, _torn = _whole_records(path.read_bytes())
        if last is not None:
            return last
    return 0


class Journal:
    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 32 * 1024 * 1024,
        fsync_interval: float = 1.0,
        write_bytes: int = 256 * 1024,
        write_interval: float = 0.02,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.fsync_interval = fsync_interval
        self.write_bytes = write_bytes
        self.write_interval = write_interval
        # Encoded records not yet written (see the module docstring).
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._fsync_pending: asyncio.Future | None = None
        self._fd: int | None = None
        self._segment_size = 0
        self._last_fsync = time.monotonic()
        #: Sequence number the next appended record gets.
        self.next_seq = 1
        self.truncated_bytes = 0
        self._open()
        #: Bytes on disk, kept current by append and reclaim (no stat per frame).
        self.total_bytes = self.size_bytes

    # -- segments --------------------------------------------------------------
    def segments(self) -> list[tuple[int, Path]]:
        """``(first seq, path)`` of every segment, oldest first."""
        return _segments(self.directory)

    @property
    def size_bytes(self) -> int:
        return sum(path.stat().st_size for _, path in self.segments())

    def _open(self) -> None:
        segments = self.segments()
        if not segments:
            self._start_segment(self.next_seq)
            return
        first, path = segments[-1]
        data = path.read_bytes()
        last, offset, torn = _whole_records(data)
        if torn is not None:
            self.truncated_bytes = len(data) - offset
            log.warning("journal %s: cutting a torn tail of %d bytes (%s)", path, self.truncated_bytes, torn)
            with open(path, "r+b") as fh:
                fh.truncate(offset)
        self.next_seq = (first - 1 if last is None else last) + 1
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._segment_size = offset

    def _start_segment(self, first_seq: int) -> None:
        if self._fd is not None:
            self.flush()
            os.fsync(self._fd)
            os.close(self._fd)
        path = self.directory / f"{first_seq:020d}{SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._segment_size = 0

    # -- writing ---------------------------------------------------------------
    def append(self, local_ts: int, kind: Kind, payload: bytes | str = b"", meta: str = "") -> int:
        """Add one record; returns its sequence number."""
        return self.append_record(local_ts, kind, payload, meta).seq

    def append_record(self, local_ts: int, kind: Kind, payload: bytes | str = b"", meta: str = "") -> Record:
        """Add one record; returns it (with its sequence number)."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        seq = self.next_seq
        record = Record(seq, local_ts, kind, meta, payload)
        data = encode(record)
        size = len(data)
        if self._segment_size and self._segment_size + size > self.segment_bytes:
            self._start_segment(seq)
        pending = self._pending
        pending.append(data)
        self._pending_bytes += size
        self._segment_size += size
        self.total_bytes += size
        self.next_seq = seq + 1
        if self._pending_bytes >= self.write_bytes:
            self.flush()
        elif self._flush_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()  # no loop to flush later: write now
            else:
                self._flush_timer = loop.call_later(self.write_interval, self._timed_flush)
        return record

    def _timed_flush(self) -> None:
        self._flush_timer = None
        self.flush()

    def flush(self) -> None:
        """Write the collected records (then fsync when one is due)."""
        if self._pending:
            assert self._fd is not None
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            self._pending_bytes = 0
            os.write(self._fd, data)
        now = time.monotonic()
        if now - self._last_fsync >= self.fsync_interval and self._fd is not None:
            self._last_fsync = now
            self._fsync_soon()

    def _fsync_soon(self) -> None:
        """fsync the segment being written: in a thread inside an event loop
        (an fsync can take many milliseconds, and the loop must keep serving
        the feed and the live cache), at once outside one."""
        fd = self._fd
        assert fd is not None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            os.fsync(fd)
            return
        if self._fsync_pending is not None and not self._fsync_pending.done():
            return  # one at a time; the next flush asks again
        self._fsync_pending = loop.run_in_executor(None, _fsync_quietly, fd)

    def sync(self) -> None:
        self.flush()
        if self._fd is not None:
            os.fsync(self._fd)
            self._last_fsync = time.monotonic()

    def close(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._fd is not None:
            self.flush()
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    # -- reading ---------------------------------------------------------------
    def read(self, from_seq: int = 0) -> Iterator[Record]:
        """Records with ``seq >= from_seq``, in order (up to what was appended so far)."""
        self.flush()
        segments = self.segments()
        for index, (first, path) in enumerate(segments):
            following = segments[index + 1][0] if index + 1 < len(segments) else None
            if following is not None and following <= from_seq:
                continue  # the whole segment is before from_seq
            try:
                data = memoryview(path.read_bytes())
            except FileNotFoundError:
                continue  # reclaimed meanwhile: it held only records already stored
            offset = 0
            while offset < len(data):
                try:
                    record, offset = decode_from(data, offset)
                except CorruptRecord:
                    break  # a record being written right now, or a cut tail
                if record.seq >= from_seq:
                    yield record

    # -- reclaiming ------------------------------------------------------------
    def reclaim(self, base_seq: int) -> int:
        """Delete segments holding only records before ``base_seq``; returns bytes freed."""
        segments = self.segments()
        freed = 0
        for index, (first, path) in enumerate(segments[:-1]):  # never the segment being written
            following = segments[index + 1][0]
            if following <= base_seq:
                freed += path.stat().st_size
                path.unlink()
        self.total_bytes -= freed
        return freed
