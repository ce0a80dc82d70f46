"""Counters of one exchange feed; what the replay and demo summaries print."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class FeedStats:
    frames: int = 0
    book_messages: int = 0
    #: Level changes stored in ``book_updates`` (snapshot levels included).
    book_updates: int = 0
    trades: int = 0
    #: Periodic book snapshots written (one per book per interval, not per level).
    snapshots_written: int = 0
    sequence_gaps: int = 0
    resyncs: int = 0
    crossed: int = 0
    #: Frames or parts of frames quarantined with a reason.
    rejected: int = 0
    control: int = 0
    exchange_errors: int = 0
    reconnects: int = 0
    snapshot_requests: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
