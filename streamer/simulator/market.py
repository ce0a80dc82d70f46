"""A synthetic market: order-book dynamics with no I/O, deterministic given a seed.

Each symbol has a hidden *fair price* that follows a geometric random walk on
a fixed 100 ms grid. Order flow arrives as a Poisson process at the symbol's
rate (market actions per second) and reacts to it:

* limit orders join the book at a distance from the fair price drawn from a
  near / middle / far mixture, so the top of the book is busy and dense while
  the far book is sparse and slowly refreshed; deeper orders are larger;
* cancels hit the top harder than the rest (a geometric rank choice) but
  also reach every depth, so stale far levels churn too;
* takers consume the top of the book. Their side is random with a bias
  towards the fair price's drift, and when the fair price has moved through
  the opposite touch they sweep the stale levels (which is what moves the
  traded price);
* now and then a few top levels vanish at once (a spread widening), and
  the book refills from the order flow.

Everything is integer arithmetic on the tick and lot grids. Prices are
``ticks * tick_size`` and sizes ``lots * lot_size``; their strings are
formatted exactly with the symbol's decimals. Books never cross, sizes are
never negative, and each side keeps at most ``max_levels`` levels (the
farthest are pruned, with a deletion event), so memory stays flat however
long the simulation runs.

Determinism: the events depend only on the seed, ``start_us`` and the times
passed to :meth:`MarketSimulator.step` (and not on how the time is sliced
into steps, except when a step skips more than ``max_catchup_s``). The fair
price path is seeded per base asset and not per venue, so simulators for
different exchanges started at the same time quote the same asset at
nearly the same price.
"""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Iterator, Literal, Sequence, Union

from sortedcontainers import SortedDict

from ..errors import ConfigError, InvalidSymbolError

Side = Literal["bid", "ask"]
TakerSide = Literal["buy", "sell"]

SECONDS_PER_YEAR = 365 * 24 * 3600
_ASSET = re.compile(r"^[A-Z0-9]{1,16}$")


def _decimal(name: str, value: object) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"{name} must be a decimal number, got {value!r}") from None
    if not number.is_finite() or number <= 0:
        raise ConfigError(f"{name} must be a positive decimal number, got {value!r}")
    return number


def _grid_units(name: str, step: Decimal, decimals: int) -> int:
    """``step`` expressed in units of ``10**-decimals``; it must be a whole number."""
    units = step.scaleb(decimals)
    if units != units.to_integral_value():
        raise ConfigError(f"{name} {step} has more decimals than {decimals}")
    return int(units)


def format_units(units: int, decimals: int) -> str:
    """``units * 10**-decimals`` as a fixed-point string with exactly ``decimals`` decimals."""
    if decimals == 0:
        return str(units)
    whole, frac = divmod(units, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}"


@dataclass(frozen=True)
class SimSymbol:
    """One simulated instrument.

    ``start_price``, ``tick_size`` and ``lot_size`` accept anything
    ``Decimal(str(x))`` reads. Prices are written with ``price_decimals``
    decimals and sizes with ``size_decimals`` (default: the lot size's own
    decimals). ``rate`` (market actions per second), ``volatility``
    (annualised) and ``typical_notional`` (quote currency per order)
    override the market's defaults for this symbol.
    """

    base: str
    quote: str
    start_price: Decimal
    tick_size: Decimal
    lot_size: Decimal
    price_decimals: int
    size_decimals: int | None = None
    rate: float | None = None
    volatility: float | None = None
    typical_notional: float | None = None

    def __post_init__(self) -> None:
        for name in ("base", "quote"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _ASSET.match(value):
                raise ConfigError(f"SimSymbol.{name} must be an upper-case asset code, got {value!r}")
        set_ = object.__setattr__
        set_(self, "start_price", _decimal("start_price", self.start_price))
        set_(self, "tick_size", _decimal("tick_size", self.tick_size))
        set_(self, "lot_size", _decimal("lot_size", self.lot_size))
        if self.size_decimals is None:
            set_(self, "size_decimals", max(0, -self.lot_size.normalize().as_tuple().exponent))
        for name in ("price_decimals", "size_decimals"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 18:
                raise ConfigError(f"SimSymbol.{name} must be an integer from 0 to 18, got {value!r}")
        _grid_units("tick_size", self.tick_size, self.price_decimals)
        _grid_units("lot_size", self.lot_size, self.size_decimals)
        if self.start_price / self.tick_size < 100:
            raise ConfigError(f"{self.symbol}: start_price must be at least 100 ticks")
        for name in ("rate", "volatility", "typical_notional"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"SimSymbol.{name} must be a positive finite number, got {value!r}")

    @property
    def symbol(self) -> str:
        """Normalized ``BASE-QUOTE``."""
        return f"{self.base}-{self.quote}"

    @property
    def tick_units(self) -> int:
        return _grid_units("tick_size", self.tick_size, self.price_decimals)

    @property
    def lot_units(self) -> int:
        return _grid_units("lot_size", self.lot_size, self.size_decimals)


@dataclass(frozen=True)
class MarketParams:
    """Dynamics shared by every symbol of a simulator (symbols may override some)."""

    #: Market actions (order adds, cancels, taker orders) per second per symbol.
    rate: float = 50.0
    #: Annualised volatility of the fair price.
    volatility: float = 0.6
    #: Quote-currency value of a typical resting order.
    typical_notional: float = 2500.0
    #: Levels per side the order flow settles around (cancels scale with book size).
    target_levels: int = 400
    #: Hard bound on levels per side; the farthest are pruned beyond it.
    max_levels: int = 1000
    #: Cancels and takers never thin a side below this many levels.
    min_levels: int = 20
    #: Market actions run (with a still fair price) to build the opening book.
    warmup_actions: int = 4000
    #: Far orders rest up to about this fraction of the price away from it.
    depth_fraction: float = 0.004
    #: Relative action weights; the cancel weight applies at ``target_levels``.
    p_add: float = 0.5
    p_cancel: float = 0.4
    p_trade: float = 0.1
    p_widen: float = 0.003
    #: A taker sweeps at most this many levels.
    max_sweep_levels: int = 25
    #: A step that skips more than this much time fast-forwards instead of catching up.
    max_catchup_s: float = 5.0
    #: Grid of the fair-price random walk.
    fair_step_us: int = 100_000

    def __post_init__(self) -> None:
        for name in ("rate", "volatility", "typical_notional", "depth_fraction", "max_catchup_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"MarketParams.{name} must be a positive finite number, got {value!r}")
        if not 1 <= self.min_levels < self.target_levels <= self.max_levels:
            raise ConfigError("MarketParams needs 1 <= min_levels < target_levels <= max_levels")
        for name in ("p_add", "p_cancel", "p_trade", "p_widen"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"MarketParams.{name} must be a non-negative weight, got {value!r}")
        if self.p_add <= 0 or self.p_cancel <= 0:
            raise ConfigError("MarketParams.p_add and p_cancel must be positive")
        if self.fair_step_us <= 0 or self.max_sweep_levels <= 0 or self.warmup_actions < 0:
            raise ConfigError("MarketParams: fair_step_us and max_sweep_levels must be positive, "
                              "warmup_actions not negative")


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class LevelChange:
    """One price level's new state. ``size == "0"`` (all zeros) deletes it.

    ``seq`` numbers the symbol's book changes without gaps (one per change),
    which is what exchange update ids are made from. ``was_present`` says
    whether the level existed just before this change.
    """

    symbol: str
    side: Side
    ticks: int
    price: str
    size: str
    lots: int
    orders: int
    ts_us: int
    seq: int
    was_present: bool


@dataclass(slots=True)
class MarketTrade:
    """One fill of a taker order against one resting level. ``taker_side`` is
    ``"buy"`` when the taker lifted an ask. Fills of one taker order share
    ``order_id``."""

    symbol: str
    trade_id: int
    order_id: int
    ticks: int
    price: str
    size: str
    taker_side: TakerSide
    ts_us: int


MarketEvent = Union[LevelChange, MarketTrade]


# ---------------------------------------------------------------------------
# The book of one symbol
# ---------------------------------------------------------------------------


class SimBook:
    """The current book of one symbol, readable by protocol renderers.

    Each side is ordered best first by its *rank*: ``ticks`` for asks and
    ``-ticks`` for bids, so a smaller rank is always the better price.
    Values are ``[lots, orders, last_update_us, price_str, size_str]`` (the
    strings are kept so that renderers and checksums never reformat them).
    """

    __slots__ = ("spec", "symbol", "seq", "_sides", "_price_mult", "_lot_mult", "_pd", "_sd", "zero_size")

    def __init__(self, spec: SimSymbol, first_seq: int) -> None:
        self.spec = spec
        self.symbol = spec.symbol
        #: Sequence number of the last change (the next change gets ``seq + 1``).
        self.seq = first_seq
        self._sides: dict[str, SortedDict] = {"bid": SortedDict(), "ask": SortedDict()}
        self._price_mult = spec.tick_units
        self._lot_mult = spec.lot_units
        self._pd = spec.price_decimals
        self._sd = spec.size_decimals
        self.zero_size = format_units(0, spec.size_decimals)

    # -- formatting ---------------------------------------------------------
    def price_str(self, ticks: int) -> str:
        return format_units(ticks * self._price_mult, self._pd)

    def size_str(self, lots: int) -> str:
        return format_units(lots * self._lot_mult, self._sd)

    # -- reading ------------------------------------------------------------
    @staticmethod
    def rank(side: str, ticks: int) -> int:
        return ticks if side == "ask" else -ticks

    @staticmethod
    def ticks_of(side: str, rank: int) -> int:
        return rank if side == "ask" else -rank

    def count(self, side: str) -> int:
        return len(self._sides[side])

    def best(self, side: str) -> int | None:
        """Ticks of the best level, or None when the side is empty."""
        levels = self._sides[side]
        if not levels:
            return None
        return self.ticks_of(side, levels.peekitem(0)[0])

    def nth_rank(self, side: str, n: int) -> int | None:
        """Rank of the ``n``-th best level (0-based), or None when there are fewer."""
        levels = self._sides[side]
        if n >= len(levels):
            return None
        return levels.keys()[n]

    def get(self, side: str, ticks: int) -> tuple[int, int, int] | None:
        """``(lots, orders, last_update_us)`` of a level, or None."""
        value = self._sides[side].get(self.rank(side, ticks))
        return None if value is None else (value[0], value[1], value[2])

    def get_by_rank(self, side: str, rank: int) -> list | None:
        """The raw level ``[lots, orders, last_update_us, price_str, size_str]`` at a rank, or None."""
        return self._sides[side].get(rank)

    def top(self, side: str, n: int | None = None) -> list[tuple[int, int, int, int]]:
        """The best ``n`` levels (all when None) as ``(ticks, lots, orders, last_update_us)``."""
        return [(ticks, lots, orders, ts) for ticks, _, _, lots, orders, ts in self.rows(side, n)]

    def rows(self, side: str, n: int | None = None) -> list[tuple[int, str, str, int, int, int]]:
        """The best ``n`` levels as ``(ticks, price, size, lots, orders, last_update_us)``."""
        levels = self._sides[side]
        keys, values = levels.keys(), levels.values()
        stop = len(keys) if n is None else min(n, len(keys))
        sign = 1 if side == "ask" else -1
        return [(sign * rank, v[3], v[4], v[0], v[1], v[2]) for rank, v in zip(keys[:stop], values[:stop])]

    def levels(self, side: str, n: int | None = None) -> list[tuple[str, str]]:
        """The best ``n`` levels as exact ``(price, size)`` strings."""
        levels = self._sides[side]
        values = levels.values()
        stop = len(values) if n is None else min(n, len(values))
        return [(v[3], v[4]) for v in values[:stop]]

    def ranks_between(self, side: str, after: int, through: int | None) -> Iterator[int]:
        """Ranks strictly worse than ``after`` and not worse than ``through`` (None: to the end)."""
        return self._sides[side].irange(after, through, inclusive=(False, True))

    def is_crossed(self) -> bool:
        bid, ask = self.best("bid"), self.best("ask")
        return bid is not None and ask is not None and bid >= ask

    def mid_ticks(self) -> float | None:
        bid, ask = self.best("bid"), self.best("ask")
        if bid is None or ask is None:
            return None
        return (bid + ask) / 2

    # -- writing (the engine only) ----------------------------------------------
    def _set(self, side: str, ticks: int, lots: int, orders: int, ts_us: int, out: list | None) -> None:
        """Set a level's absolute state (``lots == 0`` deletes) and record the change."""
        levels = self._sides[side]
        rank = ticks if side == "ask" else -ticks
        value = levels.get(rank)
        was_present = value is not None
        if lots > 0:
            size = format_units(lots * self._lot_mult, self._sd)
            if value is None:
                price = format_units(ticks * self._price_mult, self._pd)
                levels[rank] = [lots, orders, ts_us, price, size]
            else:
                price = value[3]
                value[0], value[1], value[2], value[4] = lots, orders, ts_us, size
        elif was_present:
            price, size = value[3], self.zero_size
            del levels[rank]
        else:
            return  # deleting a level that is not there changes nothing
        self.seq += 1
        if out is not None:
            out.append(LevelChange(self.symbol, side, ticks, price, size, lots, orders if lots > 0 else 0,
                                   ts_us, self.seq, was_present))


# ---------------------------------------------------------------------------
# Dynamics of one symbol
# ---------------------------------------------------------------------------


class _SymbolEngine:
    """Order flow for one symbol; mutates its :class:`SimBook`."""

    def __init__(self, spec: SimSymbol, params: MarketParams, seed: int, venue: str,
                 start_us: int, default_rate: float) -> None:
        self.spec = spec
        self.params = params
        # Order flow is seeded per venue and symbol; the fair price per base asset only.
        self.rng = random.Random(f"coby-sim:{seed}:{venue}:{spec.symbol}")
        self._fair_rng = random.Random(f"coby-sim-fair:{seed}:{spec.base}")
        self.book = SimBook(spec, first_seq=self.rng.randrange(10**8, 10**9))
        self.next_trade_id = self.rng.randrange(10**7, 10**8)
        self.next_order_id = 1
        #: Market actions taken since the start (the opening book excluded).
        self.actions = 0
        self.rate = float(spec.rate or default_rate)
        volatility = spec.volatility or params.volatility
        step_s = params.fair_step_us / 1e6
        self._sigma_step = volatility * math.sqrt(step_s / SECONDS_PER_YEAR)
        # Per-second relative sigma; times the fair price in ticks it scales the near-book distances.
        self._sigma_1s = volatility / math.sqrt(SECONDS_PER_YEAR)
        self._start_ticks = float(spec.start_price / spec.tick_size)
        self._min_log = math.log(100.0 / self._start_ticks)
        self._log_ret = 0.0
        self.fair = self._start_ticks
        self._fair_next_us = (start_us // params.fair_step_us + 1) * params.fair_step_us
        price = float(spec.start_price)
        notional = spec.typical_notional or params.typical_notional
        self._typical_lots = max(1.0, notional / (price * float(spec.lot_size)))
        self._max_lots = int(self._typical_lots * 1000) + 1
        self._next_us = float(start_us)
        self._max_catchup_us = params.max_catchup_s * 1e6
        self._build_opening_book(start_us)
        self._schedule_next()

    # -- clock --------------------------------------------------------------
    def _schedule_next(self) -> None:
        self._next_us += self.rng.expovariate(self.rate) * 1e6

    def advance(self, now_us: int, out: list) -> None:
        if now_us - self._next_us > self._max_catchup_us:
            # A long pause (a suspended process): skip ahead instead of replaying a burst.
            self._next_us = now_us - self._max_catchup_us
        while self._next_us <= now_us:
            ts = int(self._next_us)
            self._advance_fair(ts)
            self._act(ts, out)
            self.actions += 1
            self._schedule_next()
        self._advance_fair(now_us)

    def _advance_fair(self, ts: int) -> None:
        step = self.params.fair_step_us
        sigma = self._sigma_step
        moved = False
        while self._fair_next_us <= ts:
            self._log_ret += sigma * self._fair_rng.gauss(0.0, 1.0) - 0.5 * sigma * sigma
            self._fair_next_us += step
            moved = True
        if moved:
            if self._log_ret < self._min_log:
                self._log_ret = self._min_log
            self.fair = self._start_ticks * math.exp(self._log_ret)

    # -- actions ------------------------------------------------------------
    def _act(self, ts: int, out: list | None) -> None:
        p = self.params
        book = self.book
        bid, ask = book.best("bid"), book.best("ask")
        # Fair price through the opposite touch: takers chase it.
        chasing = (ask is not None and self.fair > ask + 0.5) or (bid is not None and self.fair < bid - 0.5)
        w_trade = p.p_trade + (0.3 if chasing else 0.0)
        # Every resting level has the same chance to be cancelled, so the cancel
        # weight grows with the book and the book settles around target_levels.
        levels = book.count("bid") + book.count("ask")
        w_cancel = p.p_cancel * levels / (2 * p.target_levels)
        u = self.rng.random() * (w_trade + w_cancel + p.p_widen + p.p_add)
        if u < w_trade:
            self._taker(ts, out)
        elif u < w_trade + w_cancel:
            self._cancel(ts, out)
        elif u < w_trade + w_cancel + p.p_widen:
            self._widen(ts, out)
        else:
            self._add("bid" if self.rng.random() < 0.5 else "ask", ts, out)

    def _distance(self) -> tuple[int, float]:
        """Ticks away from the fair price for a new order, and its depth class scale."""
        rng = self.rng
        sigma_ticks = self.fair * self._sigma_1s
        near = max(2.0, 0.5 * sigma_ticks)
        middle = max(8.0, 5.0 * sigma_ticks)
        far = max(middle * 2, self.fair * self.params.depth_fraction)
        u = rng.random()
        if u < 0.5:
            d = rng.expovariate(1.0 / near)
        elif u < 0.85:
            d = rng.expovariate(1.0 / middle)
        else:
            d = rng.expovariate(1.0 / far)
        return int(d), d / middle

    def _order_lots(self, depth_scale: float) -> int:
        # Deeper orders are larger: resting size grows away from the touch.
        mean = self._typical_lots * (1.0 + 2.0 * min(1.0, depth_scale))
        lots = int(self.rng.lognormvariate(math.log(mean) - 0.5, 1.0))
        return min(max(1, lots), self._max_lots)

    def _add(self, side: str, ts: int, out: list | None) -> None:
        book = self.book
        d, depth_scale = self._distance()
        fair_floor = int(math.floor(self.fair))
        if side == "bid":
            ticks = fair_floor - d
            ask = book.best("ask")
            if ask is not None and ticks >= ask:
                ticks = ask - 1
            if ticks < 1:
                return
        else:
            ticks = fair_floor + 1 + d
            bid = book.best("bid")
            if bid is not None and ticks <= bid:
                ticks = bid + 1
        lots = self._order_lots(depth_scale)
        current = book.get(side, ticks)
        if current is None:
            book._set(side, ticks, lots, 1, ts, out)
        else:
            book._set(side, ticks, min(current[0] + lots, self._max_lots * 4), current[1] + 1, ts, out)
        self._prune(side, ts, out)

    def _prune(self, side: str, ts: int, out: list | None) -> None:
        book = self.book
        limit = self.params.max_levels
        while book.count(side) > limit:
            worst = book.ticks_of(side, book.nth_rank(side, book.count(side) - 1))
            book._set(side, worst, 0, 0, ts, out)

    def _pick_rank(self, side: str) -> int | None:
        count = self.book.count(side)
        if count == 0:
            return None
        if self.rng.random() < 0.7:
            index = int(self.rng.expovariate(1.0 / 8.0))
        else:
            index = self.rng.randrange(count)
        return self.book.nth_rank(side, min(index, count - 1))

    def _cancel(self, ts: int, out: list | None) -> None:
        rng = self.rng
        book = self.book
        bids, asks = book.count("bid"), book.count("ask")
        side = "bid" if rng.random() * (bids + asks) < bids else "ask"
        rank = self._pick_rank(side)
        if rank is None:
            self._add(side, ts, out)
            return
        ticks = book.ticks_of(side, rank)
        lots, orders, _ = book.get(side, ticks)
        if orders > 1 and rng.random() < 0.7:
            removed = max(1, int(lots * rng.uniform(0.1, 0.6)))
            if removed < lots:
                remaining = lots - removed
                book._set(side, ticks, remaining, min(orders - 1, remaining), ts, out)
                return
        if book.count(side) <= self.params.min_levels:
            self._add(side, ts, out)  # keep the side deep enough: replace the cancel by an add
            return
        book._set(side, ticks, 0, 0, ts, out)

    def _widen(self, ts: int, out: list | None) -> None:
        book = self.book
        side = "bid" if self.rng.random() < 0.5 else "ask"
        k = self.rng.randint(1, 4)
        if book.count(side) <= self.params.min_levels + k:
            return
        for _ in range(k):
            book._set(side, book.best(side), 0, 0, ts, out)

    def _taker(self, ts: int, out: list | None) -> None:
        rng = self.rng
        book = self.book
        bid, ask = book.best("bid"), book.best("ask")
        if bid is None or ask is None:
            return
        fair = self.fair
        sweep_to: int | None = None
        if fair > ask + 0.5:
            taker, sweep_to = "buy", int(math.floor(fair))
        elif fair < bid - 0.5:
            taker, sweep_to = "sell", int(math.ceil(fair))
        else:
            spread = ask - bid
            imbalance = (fair - (bid + ask) / 2) / max(1.0, spread / 2 + max(2.0, 0.5 * fair * self._sigma_1s))
            taker = "buy" if rng.random() < 0.5 + 0.45 * math.tanh(imbalance) else "sell"
        resting = "ask" if taker == "buy" else "bid"
        wanted = int(rng.lognormvariate(math.log(self._typical_lots * 0.6), 1.2)) + 1
        order_id = self.next_order_id
        self.next_order_id += 1
        swept = 0
        min_levels = self.params.min_levels
        while swept < self.params.max_sweep_levels and book.count(resting) > min_levels:
            ticks = book.best(resting)
            in_sweep = sweep_to is not None and (ticks <= sweep_to if taker == "buy" else ticks >= sweep_to)
            if wanted <= 0 and not in_sweep:
                break
            lots, orders, _ = book.get(resting, ticks)
            fill = lots if in_sweep else min(wanted, lots)
            wanted -= fill
            swept += 1
            if out is not None:
                out.append(MarketTrade(book.symbol, self.next_trade_id, order_id, ticks, book.price_str(ticks),
                                       book.size_str(fill), taker, ts))
            self.next_trade_id += 1
            remaining = lots - fill
            if remaining > 0:
                filled_orders = rng.randint(0, orders - 1) if orders > 1 else 0
                book._set(resting, ticks, remaining, max(1, min(orders - filled_orders, remaining)), ts, out)
            else:
                book._set(resting, ticks, 0, 0, ts, out)

    # -- opening book ---------------------------------------------------------
    def _build_opening_book(self, ts: int) -> None:
        # Seed both sides, then let the ordinary order flow run with the fair
        # price held still, so the opening book already has the steady-state
        # depth profile instead of a pile of orders at the touch.
        for _ in range(self.params.min_levels * 2):
            self._add("bid", ts, None)
            self._add("ask", ts, None)
        for _ in range(self.params.warmup_actions):
            self._act(ts, None)


# ---------------------------------------------------------------------------
# The simulator
# ---------------------------------------------------------------------------


class MarketSimulator:
    """Simulated books and trades for several symbols of one venue.

    ``seed`` fixes everything; ``venue`` salts the order flow (not the fair
    price) so simulators for different exchanges differ in detail but agree
    on prices. ``rate`` is the default number of market actions per second
    per symbol. ``start_us`` defaults to the wall clock.
    """

    def __init__(
        self,
        symbols: Sequence[SimSymbol],
        seed: int = 0,
        *,
        start_us: int | None = None,
        params: MarketParams | None = None,
        venue: str = "",
        rate: float | None = None,
    ) -> None:
        if not symbols:
            raise ConfigError("a MarketSimulator needs at least one symbol")
        names = [s.symbol for s in symbols]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate simulator symbols: {names}")
        self.params = params or MarketParams()
        default_rate = self.params.rate if rate is None else rate
        if not (math.isfinite(default_rate) and default_rate > 0):
            raise ConfigError(f"rate must be a positive number of actions per second, got {rate!r}")
        self.seed = seed
        self.start_us = int(time.time() * 1e6) if start_us is None else int(start_us)
        self.now_us = self.start_us
        self._engines = [
            _SymbolEngine(spec, self.params, seed, venue, self.start_us, default_rate) for spec in symbols
        ]
        self._books = {engine.book.symbol: engine.book for engine in self._engines}
        self.symbols: list[SimSymbol] = list(symbols)

    def book(self, symbol: str) -> SimBook:
        """The live book of a normalized symbol (``BTC-USDT``)."""
        book = self._books.get(symbol)
        if book is None:
            raise InvalidSymbolError(f"symbol {symbol!r} is not simulated here (have {sorted(self._books)})")
        return book

    @property
    def books(self) -> dict[str, SimBook]:
        return dict(self._books)

    def fair_price(self, symbol: str) -> float:
        """The hidden fair price (in quote currency), for tests and diagnostics."""
        for engine in self._engines:
            if engine.book.symbol == symbol:
                return engine.fair * float(engine.spec.tick_size)
        raise InvalidSymbolError(f"symbol {symbol!r} is not simulated here")

    def action_counts(self) -> dict[str, int]:
        """Market actions taken per symbol since the start (for rate checks and statistics)."""
        return {engine.book.symbol: engine.actions for engine in self._engines}

    def step(self, now_us: int) -> list[MarketEvent]:
        """Advance every symbol to ``now_us`` and return what happened, in order per symbol.

        Calls must not go back in time; a call with an earlier time than the
        last one is a no-op.
        """
        if now_us < self.now_us:
            return []
        self.now_us = now_us
        out: list[MarketEvent] = []
        for engine in self._engines:
            engine.advance(now_us, out)
        return out
