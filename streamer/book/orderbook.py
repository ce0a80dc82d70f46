"""An L2 order book that keeps the exchange's own price and size strings.

Each side maps a float key (``-price`` for bids, ``price`` for asks) to the
``(price, size)`` pair exactly as the exchange last wrote it, which is what
the exchanges' checksums are computed over, and keeps its keys sorted so that
position 0 is the best level (see :class:`OrderBook`).

No Decimal arithmetic happens on the update path; Decimals are only built when
a caller asks for an :class:`~streamer.models.OrderBookSnapshot`.
"""

from __future__ import annotations

import re
from datetime import datetime
from bisect import bisect_left, bisect_right, insort
from operator import itemgetter
from math import inf as _INF, isfinite
from typing import Iterable, Iterator, Sequence

from ..errors import InvalidValueError, MalformedFrameError
from ..models import LevelValues, OrderBookSnapshot, PriceLevel, RawLevel, Side

#: A plain non-negative decimal as exchanges write prices and sizes: no sign,
#: exponent, whitespace, underscores, NaN or infinity, and at most 24 digits on
#: either side of the point (so the value is always a finite float). ASCII
#: digits only: ``\d`` would also take other scripts' digits, which float() reads.
#: The quantifiers are possessive (``+``): what follows a run of digits never
#: starts with a digit, so giving digits back cannot make a match, and not
#: keeping the backtracking points makes the match 40 % faster.
_DECIMAL_TEXT = r"(?:[0-9]{1,24}+(?:\.[0-9]{0,24}+)?+|\.[0-9]{1,24}+)"
_DECIMAL = re.compile(_DECIMAL_TEXT + r"\Z")
is_decimal = _DECIMAL.match
#: Plain decimals, one per line (see decimal_columns).
_DECIMAL_LINES = re.compile(f"{_DECIMAL_TEXT}(?:\n{_DECIMAL_TEXT})*+")
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


def _apply_one_by_one(levels_by_key: dict, keys: list | None, levels: Iterable[RawLevel], bid: bool) -> LevelValues:
    """Apply levels to one side; with ``keys`` None the caller sorts the keys afterwards."""
    pop = levels_by_key.pop
    prices: list[float] = []
    sizes: list[float] = []
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
        prices.append(p)
        sizes.append(s)
        key = -p if bid else p
        if s == 0.0:
            if pop(key, None) is not None and keys is not None:
                del keys[bisect_left(keys, key)]
        else:
            if keys is not None and key not in levels_by_key:
                insort(keys, key)
            levels_by_key[key] = (price, size)
    return prices, sizes


def _apply_columns(levels_by_key: dict, keys: list | None, levels: list, bid: bool) -> LevelValues:
    """_apply_one_by_one for a long list: conversions and checks per column in C."""
    prices, sizes = zip(*levels)  # ValueError/TypeError unless every level is a pair
    if set(map(type, prices)) != _STR_ONLY or set(map(type, sizes)) != _STR_ONLY:
        _apply_one_by_one({}, None, levels, bid)  # raises, naming the level
    try:
        p_values = list(map(float, prices))
        s_values = list(map(float, sizes))
    except ValueError:
        _apply_one_by_one({}, None, levels, bid)  # raises, naming the level
        raise
    if not (all(map(isfinite, p_values)) and all(map(isfinite, s_values))
            and min(p_values) >= 0.0 and min(s_values) >= 0.0):
        _apply_one_by_one({}, None, levels, bid)  # raises, naming the level
    pop = levels_by_key.pop
    for key, s, price, size in zip([-p for p in p_values] if bid else p_values, s_values, prices, sizes):
        if s == 0.0:
            if pop(key, None) is not None and keys is not None:
                del keys[bisect_left(keys, key)]
        else:
            if keys is not None and key not in levels_by_key:
                insort(keys, key)
            levels_by_key[key] = (price, size)
    return p_values, s_values


class OrderBook:
    """One symbol's L2 book. Not thread-safe; one owner (its BookSync).

    Each side is a dict from key to level plus the list of its keys in
    ascending order, kept sorted with :mod:`bisect`: an insert or a delete is
    one C call and a short memory move (books hold hundreds to a few thousand
    levels), where a sorted container written in Python costs a few method
    calls per level. Keys are ``-price`` for bids and ``price`` for asks, so
    that position 0 is always the best level and "100.0" and "100.00" are the
    same level. A float is exact enough as a key: every exchange decimal
    string with up to 15 significant digits maps to a distinct float.

    ``bid_version`` and ``ask_version`` change whenever their side may have
    changed, and ``checksum_memo`` is free for the exchange's checksum rules:
    together they let a checksum reuse the part of a side that no frame
    touched since it was last computed (a Kraken frame touches one side).
    """

    __slots__ = ("_bids", "_asks", "_bid_keys", "_ask_keys", "bid_version", "ask_version", "checksum_memo")

    def __init__(self) -> None:
        self._bids: dict[float, RawLevel] = {}
        self._asks: dict[float, RawLevel] = {}
        self._bid_keys: list[float] = []
        self._ask_keys: list[float] = []
        self.bid_version = 0
        self.ask_version = 0
        #: What the checksum rules kept of their last computation (see the class docstring).
        self.checksum_memo: object = None

    def _side(self, side: Side) -> tuple[dict[float, RawLevel], list[float]]:
        """A side's levels by key and its sorted keys, to read."""
        if side == "bid":
            return self._bids, self._bid_keys
        if side == "ask":
            return self._asks, self._ask_keys
        raise ValueError(f"side must be 'bid' or 'ask', got {side!r}")

    def _changing(self, side: Side) -> tuple[dict[float, RawLevel], list[float]]:
        """:meth:`_side`, to change: counts the side as changed."""
        levels = self._side(side)
        if side == "bid":
            self.bid_version += 1
        else:
            self.ask_version += 1
        return levels

    # -- updates -------------------------------------------------------------
    def apply(self, side: Side, price: str, size: str) -> None:
        """Set the size at ``price`` (a size that is numerically zero deletes the level).

        Raises :class:`~streamer.errors.InvalidValueError` for NaN, infinite,
        negative or non-numeric values; the book is unchanged then.
        """
        levels_by_key, keys = self._changing(side)
        _apply_one_by_one(levels_by_key, keys, ((price, size),), side == "bid")

    def apply_levels(self, side: Side, levels: Iterable[RawLevel]) -> LevelValues:
        """Apply many ``(price, size)`` pairs of one side, in order; returns their
        prices and sizes as the floats the book converted them to.

        This runs for every level of every frame: the checks of :meth:`apply`
        are inlined, and a long list is converted and checked per column. A
        level that is not a pair of finite, non-negative decimal strings
        raises :class:`~streamer.errors.InvalidValueError`; the side may then
        hold part of the list (:class:`~streamer.book.sync.BookSync` drops the
        book and resyncs).
        """
        if type(levels) is list and not levels:
            return [], []  # nothing to apply: the side (and its version) stays as it is
        # Counted as changed before applying: a level that fails half way has changed the side too.
        levels_by_key, keys = self._changing(side)
        bid = side == "bid"
        long_list = type(levels) is list and len(levels) >= _COLUMN_CHECKS_FROM
        apply = _apply_columns if long_list else _apply_one_by_one
        if levels_by_key:
            return apply(levels_by_key, keys, levels, bid)
        # An empty side (a snapshot after clear()): collect the levels and sort
        # the keys once, instead of one sorted insert each.
        collected: dict[float, RawLevel] = {}
        values = apply(collected, None, levels, bid)
        levels_by_key.update(collected)
        keys[:] = sorted(collected)
        return values

    def clear(self) -> None:
        for side in ("bid", "ask"):
            levels_by_key, keys = self._changing(side)
            levels_by_key.clear()
            keys.clear()

    def truncate(self, depth: int) -> list[tuple[Side, RawLevel]]:
        """Keep the best ``depth`` levels per side; returns the removed levels, worst first."""
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        removed: list[tuple[Side, RawLevel]] = []
        for side, keys in (("bid", self._bid_keys), ("ask", self._ask_keys)):
            if len(keys) > depth:
                pop = self._changing(side)[0].pop
                removed += [(side, pop(key)) for key in reversed(keys[depth:])]
                del keys[depth:]
        return removed

    # -- reads ---------------------------------------------------------------
    def best_bid(self) -> RawLevel | None:
        return self._bids[self._bid_keys[0]] if self._bid_keys else None

    def best_ask(self) -> RawLevel | None:
        return self._asks[self._ask_keys[0]] if self._ask_keys else None

    def top(self, side: Side, n: int) -> list[RawLevel]:
        """The best ``n`` levels of one side, best first."""
        if n <= 0:
            return []
        levels_by_key, keys = self._side(side)
        return list(map(levels_by_key.__getitem__, keys[:n]))

    def levels(self, side: Side) -> Iterator[RawLevel]:
        """Every level of one side, best first, as the side was when called."""
        levels_by_key, keys = self._side(side)
        return iter(list(map(levels_by_key.__getitem__, keys)))

    def band(self, side: Side, low: float, high: float) -> Iterator[RawLevel]:
        """Levels of one side with ``low <= price <= high``, best first, as the side was when called."""
        levels_by_key, keys = self._side(side)
        if side == "bid":
            low, high = -high, -low
        selected = keys[bisect_left(keys, low):bisect_right(keys, high)]
        return iter(list(map(levels_by_key.__getitem__, selected)))

    def is_crossed(self) -> bool:
        """True when the best bid is at or above the best ask."""
        bids, asks = self._bid_keys, self._ask_keys
        return bool(bids and asks) and -bids[0] >= asks[0]

    def depth(self, side: Side) -> int:
        return len(self._side(side)[1])

    def __len__(self) -> int:
        return len(self._bid_keys) + len(self._ask_keys)

    def __repr__(self) -> str:
        return f"OrderBook(bids={len(self._bids)}, asks={len(self._asks)}, best={self.best_bid()}/{self.best_ask()})"

    # -- pickling (the journal's STATE records) -------------------------------
    def __getstate__(self) -> tuple:
        """Each side's prices and sizes as texts, one level per line.

        A STATE record pickles every book of a feed. Pickled as they are, the
        sides cost a float, a pair and two strings per level, one object
        at a time: 250 ms for a thousand books of 300 levels, with the event
        loop stopped. Four texts per book take a seventh of that. Level order
        does not matter here (the sides are rebuilt sorted), so the dicts'
        values are read, not through the sorted keys.
        """
        bids, asks = self._bids.values(), self._asks.values()
        return (_column_text(bids, _first), _column_text(bids, _second),
                _column_text(asks, _first), _column_text(asks, _second))

    def __setstate__(self, state: tuple) -> None:
        self._bids, self._asks = {}, {}
        self._bid_keys, self._ask_keys = [], []
        self.bid_version = self.ask_version = 0
        self.checksum_memo = None
        bid_prices, bid_sizes, ask_prices, ask_sizes = state
        for side, prices, sizes in (("bid", bid_prices, bid_sizes), ("ask", ask_prices, ask_sizes)):
            if prices:
                self.apply_levels(side, list(zip(_column_values(prices), _column_values(sizes), strict=True)))

    def to_snapshot(self, exchange: str, symbol: str, ts: datetime, sequence: int | None = None,
                    depth: int | None = None) -> OrderBookSnapshot:
        """A Decimal view of the book (optionally only the best ``depth`` levels per side)."""

        def convert(side: Side) -> tuple[PriceLevel, ...]:
            values = self.levels(side) if depth is None else self.top(side, depth)
            return tuple(PriceLevel.from_strings(p, s) for p, s in values)

        return OrderBookSnapshot(exchange, symbol, ts, convert("bid"), convert("ask"), sequence)
