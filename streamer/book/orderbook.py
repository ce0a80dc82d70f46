"""An L2 order book that keeps the exchange's own price and size strings.

Levels are stored in two :class:`sortedcontainers.SortedDict` keyed by the
price as a float: ``-price`` for bids and ``price`` for asks, so that index 0
is always the best level and "100.0" and "100.00" are the same level. A float
is exact enough as a key: every exchange decimal string with up to 15
significant digits maps to a distinct float. The value is the
``(price, size)`` pair exactly as the exchange last wrote it, which is what
the exchanges' checksums are computed over.

No Decimal arithmetic happens on the update path; Decimals are only built when
a caller asks for an :class:`~streamer.models.OrderBookSnapshot`.
"""

from __future__ import annotations

import re
from datetime import datetime
from itertools import islice
from operator import itemgetter
from math import inf as _INF, isfinite
from typing import Iterable, Iterator, Sequence

from sortedcontainers import SortedDict

from ..errors import InvalidValueError, MalformedFrameError
from ..models import OrderBookSnapshot, PriceLevel, RawLevel, Side

#: A plain non-negative decimal as exchanges write prices and sizes: no sign,
#: exponent, whitespace, underscores, NaN or infinity, and at most 24 digits on
#: either side of the point (so the value is always a finite float). ASCII
#: digits only: ``\d`` would also take other scripts' digits, which float() reads.
_DECIMAL_TEXT = r"(?:[0-9]{1,24}(?:\.[0-9]{0,24})?|\.[0-9]{1,24})"
_DECIMAL = re.compile(_DECIMAL_TEXT + r"\Z")
is_decimal = _DECIMAL.match
#: Plain decimals, one per line (see decimal_columns).
_DECIMAL_LINES = re.compile(f"{_DECIMAL_TEXT}(?:\n{_DECIMAL_TEXT})*")
#: Level lists at least this long are checked column-wise (see parse_levels).
_COLUMN_CHECKS_FROM = 12
_LIST_ONLY = {list}
_STR_ONLY = {str}
_first = itemgetter(0)
_second = itemgetter(1)


def parse_levels(levels: object, what: str) -> list[RawLevel]:
    """Validate an exchange level list (``[[price, size, ...], ...]``) and
    return ``(price, size)`` string pairs.

    Extra elements per level (order counts, timestamps) are ignored here.
    Raises :class:`MalformedFrameError` for a wrong structure and
    :class:`InvalidValueError` for a price or size that is not a plain
    non-negative decimal string, so a mapper can quarantine the frame with
    the reason.

    This runs for every level of every frame, so a long list is checked a
    column at a time (:func:`decimal_columns`: the same language as
    :data:`is_decimal`). A short list (where the column checks cost more
    than they save) and a list that fails them are checked level by level,
    with the exact rule and the offending level named in the error.
    """
    if type(levels) is not list:
        raise MalformedFrameError(f"{what}: expected a list of levels, got {type(levels).__name__}")
    if len(levels) < _COLUMN_CHECKS_FROM:
        return _parse_levels_one_by_one(levels, what)
    try:
        if set(map(type, levels)) != _LIST_ONLY or min(map(len, levels)) < 2:
            raise TypeError
        prices = list(map(_first, levels))
        sizes = list(map(_second, levels))
    except (TypeError, ValueError):
        return _parse_levels_one_by_one(levels, what)
    if not decimal_columns(prices, sizes):
        return _parse_levels_one_by_one(levels, what)
    return list(zip(prices, sizes))


def decimal_columns(*columns: Sequence) -> bool:
    """True if every field of every column is a plain decimal string (:data:`is_decimal`'s language).

    One regular-expression match per column, over its fields joined by
    newlines, instead of one per field: the same language, a fraction of the
    per-field cost. A field holding a newline itself would pass for two
    fields, so the newlines are counted. False says only that some field
    fails: the caller checks field by field to name it.
    """
    for column in columns:
        if set(map(type, column)) != _STR_ONLY:
            return False
        text = as_lines(column)
        if text is None or _DECIMAL_LINES.fullmatch(text) is None:
            return False
    return True


def as_lines(fields: Sequence[str]) -> str | None:
    """The fields joined one per line, or None when a field holds a newline itself
    (it would pass for two): the text column-wise checks and encodings work on."""
    text = "\n".join(fields)
    return text if text.count("\n") == len(fields) - 1 else None


def _parse_levels_one_by_one(levels: list, what: str) -> list[RawLevel]:
    """parse_levels, level by level: raises with the first offending level named."""
    out: list[RawLevel] = []
    append = out.append
    match = _DECIMAL.match
    for level in levels:
        if not isinstance(level, list) or len(level) < 2:
            raise MalformedFrameError(f"{what}: level must be [price, size, ...], got {level!r}"[:300])
        price, size = level[0], level[1]
        if type(price) is not str or type(size) is not str:
            raise MalformedFrameError(f"{what}: price and size must be strings, got {level!r}"[:300])
        if match(price) is None or match(size) is None:
            raise InvalidValueError(f"{what}: price and size must be non-negative decimals, got {level!r}"[:300])
        append((price, size))
    return out


def _column_text(levels, field) -> str | list[str]:
    """One field of every level as one text, a line each; as a list if a field holds a newline itself."""
    values = list(map(field, levels))
    text = as_lines(values)
    return values if text is None else text


def _column_values(column: str | list[str]) -> list[str]:
    return column.split("\n") if isinstance(column, str) else column


def _invalid_level(price: object, size: object) -> InvalidValueError:
    return InvalidValueError(f"price and size must be finite, non-negative decimal strings, got {(price, size)!r}"[:300])


def _apply_one_by_one(target: dict, levels: Iterable[RawLevel], bid: bool) -> None:
    pop = target.pop
    for price, size in levels:
        if type(price) is not str or type(size) is not str:
            raise _invalid_level(price, size)
        try:
            p = float(price)
            s = float(size)
        except ValueError:
            raise _invalid_level(price, size) from None
        # Chained comparisons are False for NaN, so NaN fails here too.
        if not (0.0 <= p < _INF and 0.0 <= s < _INF):
            raise _invalid_level(price, size)
        key = -p if bid else p
        if s == 0.0:
            pop(key, None)
        else:
            target[key] = (price, size)


def _apply_columns(target: dict, levels: list, bid: bool) -> None:
    """_apply_one_by_one for a long list: conversions and checks per column in C."""
    prices, sizes = zip(*levels)  # ValueError/TypeError unless every level is a pair
    if set(map(type, prices)) != _STR_ONLY or set(map(type, sizes)) != _STR_ONLY:
        _apply_one_by_one({}, levels, bid)  # raises, naming the level
    try:
        p_values = list(map(float, prices))
        s_values = list(map(float, sizes))
    except ValueError:
        _apply_one_by_one({}, levels, bid)  # raises, naming the level
        raise
    if not (all(map(isfinite, p_values)) and all(map(isfinite, s_values))
            and min(p_values) >= 0.0 and min(s_values) >= 0.0):
        _apply_one_by_one({}, levels, bid)  # raises, naming the level
    pop = target.pop
    for key, s, price, size in zip([-p for p in p_values] if bid else p_values, s_values, prices, sizes):
        if s == 0.0:
            pop(key, None)
        else:
            target[key] = (price, size)


class OrderBook:
    """One symbol's L2 book. Not thread-safe; one owner (its BookSync).

    ``bid_version`` and ``ask_version`` change whenever their side may have
    changed, and ``checksum_memo`` is free for the exchange's checksum rules:
    together they let a checksum reuse the part of a side that no frame
    touched since it was last computed (a Kraken frame touches one side).
    """

    __slots__ = ("_bids", "_asks", "bid_version", "ask_version", "checksum_memo")

    def __init__(self) -> None:
        # Bids keyed by -price so that both sides iterate best first.
        self._bids: SortedDict = SortedDict()
        self._asks: SortedDict = SortedDict()
        self.bid_version = 0
        self.ask_version = 0
        #: What the checksum rules kept of their last computation (see the class docstring).
        self.checksum_memo: object = None

    def _touch(self, side: Side) -> None:
        if side == "bid":
            self.bid_version += 1
        else:
            self.ask_version += 1

    def _side(self, side: Side) -> SortedDict:
        if side == "bid":
            return self._bids
        if side == "ask":
            return self._asks
        raise ValueError(f"side must be 'bid' or 'ask', got {side!r}")

    # -- updates -------------------------------------------------------------
    def apply(self, side: Side, price: str, size: str) -> None:
        """Set the size at ``price`` (a size that is numerically zero deletes the level).

        Raises :class:`~streamer.errors.InvalidValueError` for NaN, infinite,
        negative or non-numeric values; the book is unchanged then.
        """
        _apply_one_by_one(self._side(side), ((price, size),), side == "bid")
        self._touch(side)

    def apply_levels(self, side: Side, levels: Iterable[RawLevel]) -> None:
        """Apply many ``(price, size)`` pairs of one side, in order.

        This runs for every level of every frame: the checks of :meth:`apply`
        are inlined, and a long list is converted and checked per column. A
        level that is not a pair of finite, non-negative decimal strings
        raises :class:`~streamer.errors.InvalidValueError`; the side may then
        hold part of the list (:class:`~streamer.book.sync.BookSync` drops the
        book and resyncs).
        """
        book = self._side(side)
        bid = side == "bid"
        if type(levels) is list and not levels:
            return  # nothing to apply: the side (and its version) stays as it is
        # Touched before applying: a level that fails half way has changed the side too.
        self._touch(side)
        if not book:
            # An empty side (a snapshot after clear()): collect the levels in a
            # plain dict and sort them once, instead of one sorted insert each.
            target: dict[float, RawLevel] = {}
        else:
            target = book
        if type(levels) is list and len(levels) >= _COLUMN_CHECKS_FROM:
            _apply_columns(target, levels, bid)
        else:
            _apply_one_by_one(target, levels, bid)
        if target is not book and target:
            book.update(target)

    def clear(self) -> None:
        self._bids.clear()
        self._asks.clear()
        self.bid_version += 1
        self.ask_version += 1

    def truncate(self, depth: int) -> list[tuple[Side, RawLevel]]:
        """Keep the best ``depth`` levels per side; returns the removed levels."""
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        removed: list[tuple[Side, RawLevel]] = []
        for side, levels in (("bid", self._bids), ("ask", self._asks)):
            if len(levels) > depth:
                self._touch(side)
            while len(levels) > depth:
                removed.append((side, levels.popitem(-1)[1]))
        return removed

    # -- reads ---------------------------------------------------------------
    def best_bid(self) -> RawLevel | None:
        return self._bids.peekitem(0)[1] if self._bids else None

    def best_ask(self) -> RawLevel | None:
        return self._asks.peekitem(0)[1] if self._asks else None

    def top(self, side: Side, n: int) -> list[RawLevel]:
        """The best ``n`` levels of one side, best first."""
        if n <= 0:
            return []
        levels = self._side(side)
        # Checksums read the top levels after every frame. sortedcontainers keeps
        # the sorted keys in sublists (``SortedList._lists``, its layout since
        # 2.0); the best ``n`` are nearly always in the first one, and slicing
        # it directly is twice as fast as the public positional slice.
        sublists = levels._list._lists
        if sublists and len(sublists[0]) >= n:
            return list(map(levels.__getitem__, sublists[0][:n]))
        return levels.values()[:n]

    def levels(self, side: Side) -> Iterator[RawLevel]:
        """Every level of one side, best first."""
        return iter(self._side(side).values())

    def band(self, side: Side, low: float, high: float) -> Iterator[RawLevel]:
        """Levels of one side with ``low <= price <= high``, best first."""
        levels = self._side(side)
        if side == "bid":
            keys = levels.irange(-high, -low)
        else:
            keys = levels.irange(low, high)
        return (levels[k] for k in keys)

    def is_crossed(self) -> bool:
        """True when the best bid is at or above the best ask."""
        # Checked after every frame: the best keys read straight from the sorted
        # key sublists (see top), a third of the cost of two peekitem calls.
        bids, asks = self._bids._list._lists, self._asks._list._lists
        return bool(bids and asks) and -bids[0][0] >= asks[0][0]

    def depth(self, side: Side) -> int:
        return len(self._side(side))

    def __len__(self) -> int:
        return len(self._bids) + len(self._asks)

    def __repr__(self) -> str:
        return f"OrderBook(bids={len(self._bids)}, asks={len(self._asks)}, best={self.best_bid()}/{self.best_ask()})"

    # -- pickling (the journal's STATE records) -------------------------------
    def __getstate__(self) -> tuple:
        """Each side's prices and sizes as texts, one level per line.

        A STATE record pickles every book of a feed. Pickled as they are, the
        sorted dicts cost a float, a pair and two strings per level, one object
        at a time: 250 ms for a thousand books of 300 levels, with the event
        loop stopped. Four texts per book take a seventh of that. Level order
        does not matter here (the sides are rebuilt sorted), so the plain
        dict's values are read, not the sorted view.
        """
        bids, asks = dict.values(self._bids), dict.values(self._asks)
        return (_column_text(bids, _first), _column_text(bids, _second),
                _column_text(asks, _first), _column_text(asks, _second))

    def __setstate__(self, state: tuple) -> None:
        self._bids = SortedDict()
        self._asks = SortedDict()
        self.bid_version = self.ask_version = 0
        self.checksum_memo = None
        bid_prices, bid_sizes, ask_prices, ask_sizes = state
        for side, prices, sizes in (("bid", bid_prices, bid_sizes), ("ask", ask_prices, ask_sizes)):
            if prices:
                self.apply_levels(side, list(zip(_column_values(prices), _column_values(sizes), strict=True)))

    def to_snapshot(self, exchange: str, symbol: str, ts: datetime, sequence: int | None = None,
                    depth: int | None = None) -> OrderBookSnapshot:
        """A Decimal view of the book (optionally only the best ``depth`` levels per side)."""

        def convert(levels: SortedDict) -> tuple[PriceLevel, ...]:
            values = levels.values() if depth is None else islice(levels.values(), depth)
            return tuple(PriceLevel.from_strings(p, s) for p, s in values)

        return OrderBookSnapshot(exchange, symbol, ts, convert(self._bids), convert(self._asks), sequence)
