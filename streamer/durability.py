"""No tick lost: the journal, the checkpoints and recovery of one feed.

Every record a feed processes is first appended to its journal
(:mod:`streamer.journal`). PostgreSQL stores each record's rows in one
transaction with the feed's checkpoint (the last record whose rows it has,
see :meth:`streamer.sinks.postgres.PostgresSink.accept`). From those two facts:

- **Crash (kill -9 at any moment).** On start, records after the checkpoint
  are re-processed from the journal by a :class:`~streamer.processor.FeedProcessor`
  started at a *base* record (a connect, or a STATE record holding the whole
  pickled processor) at or before the checkpoint. Processing is
  deterministic, so the rows are exactly those the crashed process would
  have written; rows up to the checkpoint are not written again.
- **Slow or down PostgreSQL.** The feed keeps receiving and journaling. When
  the sink's bounded memory fills, the stream is *spilled*: its live rows are
  dropped from memory, and the same recovery re-derives them from the journal,
  in order, once the database takes writes again; then the live feed takes
  over at exactly the next record.
- **Bounded disk.** After every commit, journal segments before the newest
  base at or before the checkpoint are deleted. The journal is kept under
  ``COBY_SPOOL_BUDGET_MB``: at 80 % an alarm is raised (log, ``error`` feed
  event, Redis status); at 100 % the feed stops reading the exchange until
  space is reclaimed, and the interval shows up as a recorded gap.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from pathlib import Path
from typing import Callable

import orjson

from .journal.log import Journal
from .journal.records import Kind, Record
from .processor import FeedProcessor
from .sinks.postgres import PostgresSink, RecoveryInterrupted

log = logging.getLogger(__name__)

BASE_KINDS = frozenset({Kind.CONNECT, Kind.STATE})


#: Share of the spool budget at which the alarm is raised.
ALARM_SHARE = 0.8


class FeedDurability:
    def __init__(
        self,
        stream: str,
        directory: Path,
        sink: PostgresSink,
        *,
        budget_bytes: int,
        state_interval: float = 60.0,
        segment_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.stream = stream
        self.sink = sink
        self.journal = Journal(directory, segment_bytes=min(segment_bytes, max(budget_bytes // 8, 64 * 1024)))
        self.budget_bytes = budget_bytes
        self.state_interval = state_interval
        self._last_state = time.monotonic()
        self._bytes_at_state = self.journal.total_bytes
        self.bases: list[int] = []
        #: The last record a previous run left (None for a new journal).
        self.last_record: Record | None = None
        for record in self.journal.read():
            if record.kind in BASE_KINDS:
                self.bases.append(record.seq)
            self.last_record = record
        #: Seq of the last record the live feed has fully processed.
        self.live_seq = self.journal.next_seq - 1
        self.alarm = False
        self.recoveries = 0
        self.recovered_records = 0
        self._recovery: asyncio.Task | None = None
        sink.commit_listeners.append(self._on_commit)
        sink.before_checkpoint.append(self.journal.flush)

    # -- appending ---------------------------------------------------------------
    def append(self, local_ts: int, kind: Kind, payload: bytes | str = b"", meta: str = "") -> Record:
        record = self.journal.append_record(local_ts, kind, payload, meta)
        if kind in BASE_KINDS:
            self.bases.append(record.seq)
        return record

    def ended_unexpectedly(self) -> bool:
        """The previous run stopped without closing its connection (a crash or kill -9)."""
        last = self.last_record
        return last is not None and last.kind is not Kind.DISCONNECT

    def processed(self, seq: int) -> None:
        """The live feed has processed (and handed to the sink) record ``seq``."""
        self.live_seq = seq

    def state_due(self) -> bool:
        """Time for a STATE record: a new base, so older segments can be reclaimed
        (every ``state_interval`` seconds, and every segment's worth of records)."""
        return (time.monotonic() - self._last_state >= self.state_interval
                or self.journal.total_bytes - self._bytes_at_state > self.journal.segment_bytes)

    def write_state(self, processor: FeedProcessor, local_ts: int) -> Record:
        self._last_state = time.monotonic()
        self._bytes_at_state = self.journal.total_bytes
        return self.append(local_ts, Kind.STATE, pickle.dumps(processor, protocol=pickle.HIGHEST_PROTOCOL))

    # -- budget ------------------------------------------------------------------
    def budget_state(self) -> tuple[bool, bool]:
        """(alarm: journal above 80 % of the budget, full: at or above 100 %)."""
        return self.near_budget(), self.journal.total_bytes >= self.budget_bytes

    def near_budget(self) -> bool:
        """Cheap check for every frame: is the journal at or above the alarm share of the budget?"""
        return self.journal.total_bytes >= ALARM_SHARE * self.budget_bytes

    async def wait_for_space(self, poll: float = 0.2) -> None:
        while self.journal.total_bytes >= self.budget_bytes:
            await asyncio.sleep(poll)

    # -- checkpoints and reclaiming ------------------------------------------------
    def _on_commit(self, stream: str, seq: int) -> None:
        if stream != self.stream:
            return
        base = self._base_at_or_before(seq + 1)
        if base is None:
            return
        self.journal.reclaim(base)
        self.bases = [b for b in self.bases if b >= base]

    def _base_at_or_before(self, seq: int) -> int | None:
        found = None
        for base in self.bases:
            if base > seq:
                break
            found = base
        return found

    # -- recovery ------------------------------------------------------------------
    def needs_recovery(self) -> bool:
        checkpoint = self.sink.checkpoint(self.stream)
        return self.journal.next_seq - 1 > (checkpoint if checkpoint is not None else 0)

    def ensure_recovery(self, make_processor: Callable[[], FeedProcessor]) -> None:
        """Start re-deriving the stream's rows from the journal if the sink spilled it."""
        if self.sink.is_spilled(self.stream) and (self._recovery is None or self._recovery.done()):
            self._recovery = asyncio.create_task(self.recover(make_processor), name=f"recover-{self.stream}")

    async def wait_recovered(self, timeout: float = 60.0) -> None:
        """At shutdown: give a running recovery time to finish (the journal keeps what it does not)."""
        if self._recovery is not None and not self._recovery.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._recovery), timeout)
            except (TimeoutError, asyncio.TimeoutError):
                log.warning("%s: recovery unfinished at shutdown; it resumes at the next start", self.stream)

    @property
    def recovering(self) -> bool:
        return self._recovery is not None and not self._recovery.done()

    async def recover(self, make_processor: Callable[[], FeedProcessor]) -> int:
        """Re-process the records after the checkpoint until the live feed is
        reached, then hand the stream back to it. Returns records re-processed."""
        self.recoveries += 1
        while True:
            try:
                redone = await self._recover_once(make_processor)
            except RecoveryInterrupted as exc:
                log.warning("%s; starting over from the new checkpoint", exc)
                continue
            self.recovered_records += redone
            log.warning("%s: journal re-processed (%d records); live again", self.stream, redone)
            return redone

    async def _recover_once(self, make_processor: Callable[[], FeedProcessor]) -> int:
        generation = self.sink.spill_generation
        checkpoint = await self.sink.settled_checkpoint(self.stream) or 0
        base = self._base_at_or_before(checkpoint + 1)
        position = base if base is not None else 0
        log.warning("%s: re-processing the journal after checkpoint %d (from record %d)",
                    self.stream, checkpoint, position)
        processor: FeedProcessor | None = None
        redone = 0
        while True:
            for record in self.journal.read(position):
                if record.seq > self.live_seq:
                    break
                if processor is None:
                    if record.kind is Kind.STATE:
                        processor = pickle.loads(record.payload)
                        position = record.seq + 1
                        continue
                    processor = make_processor()
                out = processor.process(record)
                position = record.seq + 1
                if record.seq > checkpoint:
                    await self.sink.accept_recovered(self.stream, record.seq, out.rows, generation)
                    redone += 1
            # No await between this check and resume(): the live feed cannot
            # process a record in between, so it takes over at exactly the next one.
            if position > self.live_seq:
                if generation != self.sink.spill_generation:
                    raise RecoveryInterrupted(f"{self.stream}: buffers spilled during recovery")
                self.sink.resume(self.stream)
                return redone
            await asyncio.sleep(0)

    def local_event(self, local_ts: int, kind: str, detail: str, symbol: str = "") -> Record:
        return self.append(local_ts, Kind.LOCAL_EVENT, orjson.dumps({"kind": kind, "detail": detail, "symbol": symbol}))

    def close(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
        self.journal.close()
