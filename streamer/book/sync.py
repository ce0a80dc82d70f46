"""The one book-synchronisation state machine, parameterised per exchange.

A :class:`BookSync` owns one symbol's :class:`~streamer.book.orderbook.OrderBook`
and decides, for every normalized :class:`~streamer.models.BookMessage`,
whether it is applied, dropped as stale, or reveals that the book has lost
synchronisation. The exchange-specific knowledge is a :class:`SyncRules`
object supplied by the exchange's mapper.

States::

    AWAITING_SNAPSHOT --snapshot--> SYNCED --gap / checksum failure--> AWAITING_SNAPSHOT

- While awaiting a snapshot, deltas are buffered when the snapshot comes from
  REST (the exchange keeps streaming while the REST request is in flight, and
  the REST body may even be older than deltas already received). The buffer is
  bounded: an overflow empties it, records a gap and asks for a resync.
  Exchanges that send the snapshot in-band (Kraken, OKX) never need the deltas
  sent before it: those belong to the previous subscription and the snapshot
  supersedes them, so they are counted in ``dropped_unsynced`` and not applied.
- A book is never published before it is synced (``is_synced``).
- On a gap or checksum failure only this symbol's book is cleared; the outcome
  carries a ``gap``/``checksum_failed`` event, a ``resync`` event and
  ``needs_resync=True`` so the caller fetches a new REST snapshot or
  resubscribes that one symbol. Other symbols are separate instances.
- A frame of a synced book that the mapper rejects (quarantined: NaN price,
  malformed level...) is a gap too (:meth:`BookSync.on_frame_rejected`): the
  book missed it, so it is not published until resynced.
- A crossed book (best bid >= best ask) after a message is recorded once per
  episode as a ``crossed`` event. It does not trigger a resync by default
  (``SyncRules.resync_on_crossed``): on Kraken and OKX a crossed book whose
  checksum matches *is* the exchange's state, and on Binance the sequence
  chain already proves nothing was missed; resyncing would only loop.
- A message whose checksum fails is not reported in ``applied`` (the book it
  was applied to is discarded), so stored updates are exactly those of books
  that were consistent.

Exchange rules (implemented by each mapper's ``SyncRules``):

Binance spot (``snapshot_from_rest``)
    Buffer ``depthUpdate`` events, fetch ``/api/v3/depth`` (``lastUpdateId`` =
    L, the snapshot's ``seq``). Drop events with ``u <= L``. The first kept
    event must satisfy ``U <= L + 1 <= u``; each later one ``U == previous u + 1``
    (``prev_seq == last seq``); events with ``u <= last u`` are stale
    duplicates. Anything else is a gap. No checksum.
Kraken spot WebSocket v1 (in-band snapshot)
    The subscription's first book frame (``as``/``bs``) is the snapshot; no
    sequence numbers. After every message the book is truncated to the
    subscribed depth N (from the ``book-N`` channel name; the mapper records it
    per pair) and the CRC32 in ``c`` is checked over the top 10 asks and bids.
    Levels removed by the truncation are reported in the applied message as
    zero-size levels so that stored updates rebuild the same book.
OKX v5 (in-band snapshot)
    ``action: snapshot`` replaces the book (``prevSeqId`` -1). Each update must
    have ``prevSeqId == previous seqId`` whenever both are present (an update
    with ``seqId == prevSeqId`` means "no change" and is valid; after exchange
    maintenance ``seqId`` may become smaller than ``prevSeqId``, which is still
    valid as long as the chain links). The signed CRC32 ``checksum`` over the
    top 25 levels is verified whenever it is non-zero (OKX now sends 0).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from enum import Enum

from ..errors import InvalidValueError
from ..models import BookMessage, FeedEvent, FeedEventKind, RawLevel
from .orderbook import OrderBook

DEFAULT_MAX_BUFFER = 10_000


class SyncState(str, Enum):
    AWAITING_SNAPSHOT = "awaiting_snapshot"
    SYNCED = "synced"


class Link(str, Enum):
    """How a delta relates to the book's last applied message."""

    APPLY = "apply"  # continues the chain
    STALE = "stale"  # older than the book: drop it
    GAP = "gap"  # something was missed: resync


class SyncRules:
    """Per-exchange book-sync rules. The defaults accept every delta and have
    no checksum; exchanges override what they know."""

    #: True when the snapshot is fetched over REST (deltas are buffered until it arrives).
    snapshot_from_rest: bool = False
    #: Truncate the book to this many levels per side after every message (None: never).
    max_depth: int | None = None
    #: Whether a crossed book forces a resync (see the module docstring).
    resync_on_crossed: bool = False

    def depth_limit(self, native_symbol: str) -> int | None:
        """The truncation depth of one symbol's book (defaults to ``max_depth``)."""
        return self.max_depth

    def first_after_snapshot(self, snapshot_seq: int | None, msg: BookMessage) -> Link:
        """Whether the first delta after a snapshot is stale, bridges it, or leaves a gap."""
        return Link.APPLY

    def next_delta(self, last_seq: int | None, msg: BookMessage) -> Link:
        """Whether a later delta continues the chain, is a stale duplicate, or is a gap."""
        return Link.APPLY

    def checksum(self, book: OrderBook) -> int | None:
        """The checksum the exchange would send for ``book``; None if it has no checksum scheme."""
        return None


@dataclass(slots=True)
class SyncOutcome:
    """What one :meth:`BookSync.on_message` call did."""

    #: Messages applied to the book, in order (a snapshot first, then any
    #: buffered deltas replayed on top of it). This is what gets stored.
    applied: list[BookMessage] = field(default_factory=list)
    events: list[FeedEvent] = field(default_factory=list)
    #: The caller must fetch a new REST snapshot or resubscribe this symbol.
    needs_resync: bool = False
    #: The book's content changed (updated, replaced or cleared).
    book_changed: bool = False


class BookSync:
    """Synchronises one symbol's book from snapshots and deltas (see the module docstring)."""

    def __init__(
        self,
        exchange: str,
        symbol: str,
        native_symbol: str,
        rules: SyncRules,
        *,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> None:
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be >= 1, got {max_buffer}")
        self.exchange = exchange
        self.symbol = symbol
        self.native_symbol = native_symbol
        self.rules = rules
        self.max_buffer = max_buffer
        self.book = OrderBook()
        self.state = SyncState.AWAITING_SNAPSHOT
        #: Sequence id of the last applied message (None when the exchange sends none).
        self.last_seq: int | None = None
        self._bridged = False  # a delta has linked to the current snapshot
        self._crossed = False  # inside a crossed episode (reported once)
        self._buffer: deque[BookMessage] = deque()
        # Counters (read by the feed's statistics and the tests).
        self.checksum_ok = 0
        self.checksum_failed = 0
        self.gaps = 0
        self.resyncs = 0
        self.applied_messages = 0
        self.dropped_stale = 0
        self.dropped_unsynced = 0
        self.buffer_overflows = 0
        self.snapshots = 0
        self.snapshot_failures = 0
        self.crossed = 0
        self.invalid = 0

    # -- state ---------------------------------------------------------------
    @property
    def is_synced(self) -> bool:
        return self.state is SyncState.SYNCED

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def counters(self) -> dict[str, int]:
        return {
            "checksum_ok": self.checksum_ok,
            "checksum_failed": self.checksum_failed,
            "gaps": self.gaps,
            "resyncs": self.resyncs,
            "applied_messages": self.applied_messages,
            "dropped_stale": self.dropped_stale,
            "dropped_unsynced": self.dropped_unsynced,
            "buffer_overflows": self.buffer_overflows,
            "snapshots": self.snapshots,
            "snapshot_failures": self.snapshot_failures,
            "crossed": self.crossed,
            "invalid": self.invalid,
        }

    def __repr__(self) -> str:
        return f"BookSync({self.exchange}:{self.symbol} {self.state.value} last_seq={self.last_seq} {self.book!r})"

    # -- inputs --------------------------------------------------------------
    def on_message(self, msg: BookMessage) -> SyncOutcome:
        """Feed one normalized book message (snapshot or delta) of this symbol."""
        out = SyncOutcome()
        if msg.is_snapshot:
            self._on_snapshot(msg, out)
        elif self.state is SyncState.SYNCED:
            self._on_delta(msg, out)
        elif self.rules.snapshot_from_rest:
            self._buffer_delta(msg, out)
        else:
            self.dropped_unsynced += 1
        return out

    def reset(self, reason: str, local_ts: int, *, record: bool = True) -> list[FeedEvent]:
        """Forget the book and the buffer (for example on a new connection).
        With ``record`` the reset counts as a resync and a ``resync`` event is returned."""
        self._clear()
        self._buffer.clear()
        if not record:
            return []
        self.resyncs += 1
        return [self._event(FeedEventKind.RESYNC, local_ts, reason)]

    def on_frame_rejected(self, reason: str, local_ts: int) -> SyncOutcome:
        """A frame of this book could not be mapped (it is in quarantine).

        The book missed whatever the frame changed, so a synced book loses sync
        now (a ``gap``) instead of staying published until the next frame's
        sequence or checksum shows the hole. An unsynced book is unaffected:
        it is waiting for a snapshot that supersedes the frame.
        """
        out = SyncOutcome()
        if self.state is SyncState.SYNCED:
            self.gaps += 1
            self._lose_sync(FeedEventKind.GAP, f"frame rejected: {reason}"[:500], local_ts, out)
        return out

    def on_snapshot_failed(self, reason: str, local_ts: int) -> list[FeedEvent]:
        """The REST snapshot request failed; the book stays unsynced and deltas
        keep being buffered (bounded) until a later request succeeds."""
        self.snapshot_failures += 1
        return [self._event(FeedEventKind.ERROR, local_ts, f"snapshot request failed: {reason}")]

    # -- internals -----------------------------------------------------------
    def _event(self, kind: FeedEventKind, local_ts: int, detail: str) -> FeedEvent:
        return FeedEvent(self.exchange, kind, local_ts, self.symbol, detail)

    def _clear(self) -> None:
        self.book.clear()
        self.state = SyncState.AWAITING_SNAPSHOT
        self.last_seq = None
        self._bridged = False
        self._crossed = False

    def _lose_sync(self, kind: FeedEventKind, detail: str, local_ts: int, out: SyncOutcome) -> None:
        self._clear()
        self.resyncs += 1
        out.events.append(self._event(kind, local_ts, detail))
        out.events.append(self._event(FeedEventKind.RESYNC, local_ts, f"resync after {kind.value}"))
        out.needs_resync = True
        out.book_changed = True

    def _buffer_delta(self, msg: BookMessage, out: SyncOutcome) -> None:
        if len(self._buffer) >= self.max_buffer:
            # The deltas are lost either way; keeping memory bounded matters more.
            dropped = len(self._buffer)
            self._buffer.clear()
            self.buffer_overflows += 1
            self.gaps += 1
            out.events.append(self._event(
                FeedEventKind.GAP, msg.local_ts,
                f"buffer overflow: {dropped} deltas dropped while awaiting a snapshot"))
            out.needs_resync = True
        self._buffer.append(msg)

    def _on_snapshot(self, msg: BookMessage, out: SyncOutcome) -> None:
        rules = self.rules
        if (
            rules.snapshot_from_rest
            and self.state is SyncState.SYNCED
            and msg.seq is not None
            and self.last_seq is not None
            and msg.seq <= self.last_seq
        ):
            # A REST body older than the live book (e.g. a duplicate request).
            self.dropped_stale += 1
            return
        was_synced = self.state is SyncState.SYNCED
        self._clear()
        out.book_changed = True
        if not self._apply(msg, out):
            return
        self.snapshots += 1
        self.state = SyncState.SYNCED
        self.last_seq = msg.seq
        if not self._verify_checksum(msg, out):
            return
        if not was_synced:
            detail = "snapshot" if msg.seq is None else f"snapshot seq {msg.seq}"
            out.events.append(self._event(FeedEventKind.SYNCED, msg.local_ts, detail))
        self._check_crossed(msg, out)
        # Replay what arrived while waiting. A gap leaves the rest buffered
        # (newest data, needed on top of the next snapshot).
        buffer = self._buffer
        while buffer and self.state is SyncState.SYNCED:
            self._on_delta(buffer.popleft(), out)

    def _on_delta(self, msg: BookMessage, out: SyncOutcome) -> None:
        rules = self.rules
        if self._bridged:
            link = rules.next_delta(self.last_seq, msg)
        else:
            link = rules.first_after_snapshot(self.last_seq, msg)
        if link is Link.STALE:
            self.dropped_stale += 1
            return
        if link is Link.GAP:
            self.gaps += 1
            detail = (
                f"{'first delta after snapshot' if not self._bridged else 'delta'} does not link: "
                f"last seq {self.last_seq}, got first_seq {msg.first_seq} prev_seq {msg.prev_seq} seq {msg.seq}"
            )
            self._lose_sync(FeedEventKind.GAP, detail, msg.local_ts, out)
            if rules.snapshot_from_rest:
                # This delta may be needed on top of the next REST snapshot.
                self._buffer.appendleft(msg)
            return
        out.book_changed = True
        if not self._apply(msg, out):
            return
        if msg.seq is not None:
            self.last_seq = msg.seq
        self._bridged = True
        if self._verify_checksum(msg, out):
            self._check_crossed(msg, out)

    def _apply(self, msg: BookMessage, out: SyncOutcome) -> bool:
        """Apply a message's levels (and the depth limit); record it in ``out.applied``."""
        book = self.book
        try:
            values = book.apply_levels("bid", msg.bids), book.apply_levels("ask", msg.asks)
        except (InvalidValueError, TypeError, ValueError) as exc:
            # Mappers validate levels, so this is a producer bug; the book is
            # half-updated and cannot be trusted.
            self.invalid += 1
            self._lose_sync(FeedEventKind.ERROR, f"invalid level in book message: {exc}", msg.local_ts, out)
            return False
        depth = self.rules.depth_limit(self.native_symbol)
        if depth is not None:
            removed = book.truncate(depth)
            if removed:
                msg = _with_truncation(msg, removed)
                values = None  # the levels stored are not those applied: the rows convert them
        msg.level_values = values
        self.applied_messages += 1
        out.applied.append(msg)
        return True

    def _verify_checksum(self, msg: BookMessage, out: SyncOutcome) -> bool:
        expected = msg.checksum
        if not expected:  # None, or 0 which OKX sends when it no longer computes one
            return True
        actual = self.rules.checksum(self.book)
        if actual is None:
            return True
        if actual == expected:
            self.checksum_ok += 1
            return True
        self.checksum_failed += 1
        # The message was applied to a book that is now discarded: do not store it.
        out.applied.pop()
        self.applied_messages -= 1
        self._lose_sync(
            FeedEventKind.CHECKSUM_FAILED,
            f"checksum mismatch: exchange {expected}, book {actual} (seq {msg.seq})",
            msg.local_ts,
            out,
        )
        return False

    def _check_crossed(self, msg: BookMessage, out: SyncOutcome) -> None:
        if not self.book.is_crossed():
            self._crossed = False
            return
        if self._crossed:
            return
        self._crossed = True
        self.crossed += 1
        bid, ask = self.book.best_bid(), self.book.best_ask()
        detail = f"crossed book: best bid {bid[0] if bid else None} >= best ask {ask[0] if ask else None}"
        if self.rules.resync_on_crossed:
            self._lose_sync(FeedEventKind.CROSSED, detail, msg.local_ts, out)
        else:
            out.events.append(self._event(FeedEventKind.CROSSED, msg.local_ts, detail))


def _with_truncation(msg: BookMessage, removed: list[tuple[str, RawLevel]]) -> BookMessage:
    """The message as applied: snapshot levels that did not survive the depth
    limit are left out, and deltas get zero-size levels for what the limit removed."""
    bids = [lvl for side, lvl in removed if side == "bid"]
    asks = [lvl for side, lvl in removed if side == "ask"]
    if msg.is_snapshot:
        gone_b, gone_a = set(bids), set(asks)
        return replace(
            msg,
            bids=[lvl for lvl in msg.bids if lvl not in gone_b],
            asks=[lvl for lvl in msg.asks if lvl not in gone_a],
        )
    return replace(
        msg,
        bids=msg.bids + [(price, "0") for price, _ in bids],
        asks=msg.asks + [(price, "0") for price, _ in asks],
    )
