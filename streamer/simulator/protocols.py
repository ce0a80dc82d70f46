"""What the protocol renderers share: the renderer interface, change batching,
the depth-window diff, and decimal-string formatting.

A renderer is one client connection's protocol state with no I/O: it turns
client text messages and market events into the exchange's native frames.
The backend calls it from one event loop, always right after the market
stepped, so the book it reads (:class:`~streamer.simulator.market.SimBook`)
is exactly the state after the events it is given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Mapping, Sequence

import orjson

from .market import LevelChange, MarketEvent, MarketSimulator, SimBook


def dumps(obj: object) -> str:
    """Compact JSON text, keys in insertion order (exchanges' field order is kept)."""
    return orjson.dumps(obj).decode()


def pad_decimals(value: str, decimals: int) -> str:
    """A fixed-point string padded with zeros to at least ``decimals`` decimals."""
    dot = value.find(".")
    have = 0 if dot < 0 else len(value) - dot - 1
    if have >= decimals:
        return value
    return value + ("" if dot >= 0 else ".") + "0" * (decimals - have)


def trim_decimals(value: str) -> str:
    """A fixed-point string without trailing zeros (``"60000.10"`` -> ``"60000.1"``, ``"0.000"`` -> ``"0"``)."""
    if "." not in value:
        return value
    return value.rstrip("0").rstrip(".")


def seconds_str(ts_us: int) -> str:
    """Microseconds as ``"1618678133.365913"`` (Kraken's timestamps)."""
    return f"{ts_us // 1_000_000}.{ts_us % 1_000_000:06d}"


class ProtocolRenderer(ABC):
    """One client connection of one exchange protocol (no I/O).

    The backend calls :meth:`on_connect` once, :meth:`on_message` for each
    client text frame and :meth:`on_market` after every market step (also
    with no events, so time-driven output such as 100 ms batches and
    heartbeats goes out). Each returns the frames to send, in order.
    A renderer that wants the connection closed sets :attr:`close_code`
    (and :attr:`close_reason`); the backend sends what is pending, then closes.
    """

    protocol: ClassVar[str]

    def __init__(self, market: MarketSimulator, *, path: str, query: Mapping[str, str], connection_id: int) -> None:
        self.market = market
        self.path = path
        self.query = query
        self.connection_id = connection_id
        self.close_code: int | None = None
        self.close_reason = ""
        #: Exact client texts answered without going through :meth:`on_message`.
        self.auto_replies: dict[str, str] = {}

    def close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason

    def on_connect(self, now_us: int) -> list[str]:
        return []

    @abstractmethod
    def on_message(self, text: str, now_us: int) -> list[str]:
        """Frames answering one client text message."""

    @abstractmethod
    def on_market(self, events: Sequence[MarketEvent], now_us: int) -> list[str]:
        """Frames due after a market step (``events`` may be empty)."""


class PendingChanges:
    """Level changes of one symbol since the last frame, collapsed per price.

    Keeps, per side and price, whether the level existed before the *first*
    change and the *last* change (the level's current state), plus the first
    and last sequence numbers.
    """

    __slots__ = ("bid", "ask", "first_seq", "last_seq")

    def __init__(self) -> None:
        self.bid: dict[int, list] = {}
        self.ask: dict[int, list] = {}
        self.first_seq: int | None = None
        self.last_seq: int | None = None

    def add(self, change: LevelChange) -> None:
        levels = self.bid if change.side == "bid" else self.ask
        entry = levels.get(change.ticks)
        if entry is None:
            levels[change.ticks] = [change.was_present, change]
        else:
            entry[1] = change
        if self.first_seq is None:
            self.first_seq = change.seq
        self.last_seq = change.seq

    def side(self, side: str) -> dict[int, list]:
        return self.bid if side == "bid" else self.ask

    def __bool__(self) -> bool:
        return self.first_seq is not None

    def clear(self) -> None:
        self.bid.clear()
        self.ask.clear()
        self.first_seq = self.last_seq = None


#: One level to send: ``(ticks, price, size, lots, orders, last_update_us, republished)``;
#: ``lots == 0`` deletes (``size`` is then the symbol's zero).
Emitted = tuple[int, str, str, int, int, int, bool]


class BookWindow:
    """What a client holding only the best ``depth`` levels of one side has,
    and how to bring it up to date with the fewest levels.

    The client's view is always exactly the top ``depth`` levels of the book
    after it applies a message, provided it either

    * truncates its book to ``depth`` after each message (Kraken: levels pushed
      out of the window are *not* sent; ``delete_pushed_out=False``), or
    * gets an explicit deletion for every level leaving the window (OKX's
      400-level ``books``; ``delete_pushed_out=True``).

    When levels inside the window are deleted, the levels that move into it
    are sent as well (Kraken marks them as republished).

    Only the boundary (the rank of the worst level in the view) is stored:
    the view is "every book level not worse than the boundary", which holds
    because the view is refreshed after every change batch.
    """

    __slots__ = ("book", "side", "depth", "_full", "_boundary")

    def __init__(self, book: SimBook, side: str, depth: int) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.book = book
        self.side = side
        self.depth = depth
        self._full = False
        self._boundary: int | None = None

    def snapshot(self) -> list[tuple[int, str, str, int, int, int]]:
        """The client's new view (best first), as ``(ticks, price, size, lots, orders, ts)``; resets the window."""
        levels = self.book.rows(self.side, self.depth)
        self._full = len(levels) >= self.depth
        self._boundary = self.book.nth_rank(self.side, self.depth - 1) if self._full else None
        return levels

    def diff(self, changes: dict[int, list], delete_pushed_out: bool) -> list[Emitted]:
        """Levels to send so the client's view becomes the book's current top ``depth``.

        ``changes`` maps ticks to ``[was_present_before_first_change, last LevelChange]``
        for every level of this side that changed since the previous call.
        """
        book, side, depth = self.book, self.side, self.depth
        rank_of = book.rank
        full_new = book.count(side) >= depth
        new_boundary = book.nth_rank(side, depth - 1) if full_new else None
        old_full, old_boundary = self._full, self._boundary
        zero = book.zero_size
        out: list[Emitted] = []
        for ticks, (was_present, change) in changes.items():
            rank = rank_of(side, ticks)
            present = change.lots > 0
            if present and (not full_new or rank <= new_boundary):
                out.append((ticks, change.price, change.size, change.lots, change.orders, change.ts_us, False))
                continue
            in_old_view = was_present and (not old_full or rank <= old_boundary)
            if in_old_view and (not present or delete_pushed_out):
                out.append((ticks, change.price, zero, 0, 0, change.ts_us, False))
        ticks_of = book.ticks_of
        if old_full:
            # Unchanged levels between the old and the new boundary enter the view.
            if not full_new or new_boundary > old_boundary:
                for rank in book.ranks_between(side, old_boundary, new_boundary if full_new else None):
                    ticks = ticks_of(side, rank)
                    if ticks in changes:
                        continue
                    level = book.get_by_rank(side, rank)
                    out.append((ticks, level[3], level[4], level[0], level[1], level[2], True))
        if delete_pushed_out and full_new:
            # Unchanged levels pushed beyond the new boundary leave the view.
            if not old_full or old_boundary > new_boundary:
                for rank in book.ranks_between(side, new_boundary, old_boundary if old_full else None):
                    ticks = ticks_of(side, rank)
                    if ticks in changes:
                        continue
                    level = book.get_by_rank(side, rank)
                    out.append((ticks, level[3], zero, 0, 0, level[2], False))
        self._full, self._boundary = full_new, new_boundary
        return out
