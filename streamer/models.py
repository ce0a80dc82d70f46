"""Normalized market-data model shared by the streamer and the pipeline.

Normalization rules (every connector follows them):

- Symbols are ``BASE-QUOTE`` in upper case (``BTC-USDT``); Kraken's ``XBT`` is
  ``BTC``. The exchange-native symbol is kept next to it (``native_symbol``).
- Prices and sizes travel as the exchange's own decimal strings until they are
  stored, so checksums can be recomputed exactly. A size of ``"0"`` deletes
  the level.
- Every event has ``local_ts`` (when COBY received the frame) and, where the
  exchange sends one, ``exchange_ts``; both are integer microseconds since the
  Unix epoch (UTC).
- Trade ``side`` is the taker's side: ``"buy"`` when the taker bought (lifted
  an ask), ``"sell"`` when the taker sold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from enum import Enum
from typing import Literal, Union

from .contract import feed_name

Side = Literal["bid", "ask"]
TakerSide = Literal["buy", "sell"]
#: (price, size) exactly as the exchange wrote them.
RawLevel = tuple[str, str]
#: The prices and sizes of a side's levels as floats, in the order of the levels.
LevelValues = tuple[list[float], list[float]]


def us_to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc)


# ---------------------------------------------------------------------------
# Events produced by the per-exchange mappers (no I/O).
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class BookMessage:
    """One exchange frame's worth of book data for one symbol.

    ``is_snapshot`` messages replace the book; others are deltas whose levels
    set absolute sizes (``"0"`` deletes). ``seq``/``prev_seq`` are the
    exchange's sequence ids when it sends them: Binance ``u`` and ``U - 1``,
    OKX ``seqId`` and ``prevSeqId``. ``first_seq`` is Binance's ``U``.
    ``checksum`` is the exchange's CRC32 for the book after this message.

    ``level_values`` is set by the book sync when it applies the message: the
    bids' and asks' prices and sizes as the floats the book converted them
    to, so that the stored rows need not convert every level again (None
    when the levels stored are not those applied: see the depth limit).
    """

    exchange: str
    symbol: str
    native_symbol: str
    bids: list[RawLevel]
    asks: list[RawLevel]
    local_ts: int
    exchange_ts: int | None = None
    is_snapshot: bool = False
    seq: int | None = None
    prev_seq: int | None = None
    first_seq: int | None = None
    checksum: int | None = None
    level_values: tuple[LevelValues, LevelValues] | None = field(default=None, repr=False, compare=False)


@dataclass(slots=True)
class TradeEvent:
    """One trade; ``side`` is the taker's side."""

    exchange: str
    symbol: str
    native_symbol: str
    trade_id: str
    price: str
    size: str
    side: TakerSide
    local_ts: int
    exchange_ts: int | None = None

    @property
    def price_decimal(self) -> Decimal:
        return Decimal(self.price)

    @property
    def size_decimal(self) -> Decimal:
        return Decimal(self.size)


@dataclass(slots=True)
class Quarantine:
    """A frame (or part of one) that could not be used, with the reason."""

    exchange: str
    reason: str
    raw: str
    local_ts: int
    code: str = "MAP-001"
    symbol: str | None = None
    #: The native symbol of the book this frame was an update (or snapshot) of,
    #: when the mapper got that far: that book missed the frame.
    book: str | None = None


@dataclass(slots=True)
class ControlEvent:
    """Protocol traffic with no market data: subscription acks, heartbeats,
    pongs, exchange status and error messages. ``reply`` is text the
    connection must send back (for example a pong)."""

    exchange: str
    kind: str
    local_ts: int
    detail: str = ""
    symbol: str | None = None
    reply: str | None = None


MappedEvent = Union[BookMessage, TradeEvent, Quarantine, ControlEvent]


# ---------------------------------------------------------------------------
# Feed events: what happened to a book or a connection (stored, counted).
# ---------------------------------------------------------------------------


class FeedEventKind(str, Enum):
    SYNCED = "synced"
    GAP = "gap"
    CHECKSUM_FAILED = "checksum_failed"
    RESYNC = "resync"
    CROSSED = "crossed"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    STALL = "stall"
    ERROR = "error"


@dataclass(slots=True)
class FeedEvent:
    exchange: str
    kind: FeedEventKind
    local_ts: int
    symbol: str = ""
    detail: str = ""


# ---------------------------------------------------------------------------
# The seed's model API: books, buckets, heatmaps, connection status.
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PriceLevel:
    price: Decimal
    size: Decimal

    @classmethod
    def from_strings(cls, price: str, size: str) -> "PriceLevel":
        return cls(Decimal(price), Decimal(size))


@dataclass(frozen=True, slots=True)
class OrderBookSnapshot:
    """A consistent view of one book: bids best (highest) first, asks best (lowest) first."""

    exchange: str
    symbol: str
    timestamp: datetime
    bids: tuple[PriceLevel, ...]
    asks: tuple[PriceLevel, ...]
    sequence: int | None = None

    @property
    def best_bid(self) -> PriceLevel | None:
        return self.bids[0] if self.bids else None

    @property
    def best_ask(self) -> PriceLevel | None:
        return self.asks[0] if self.asks else None

    @property
    def mid_price(self) -> Decimal | None:
        if not self.bids or not self.asks:
            return None
        return (self.bids[0].price + self.asks[0].price) / 2

    @property
    def spread(self) -> Decimal | None:
        if not self.bids or not self.asks:
            return None
        return self.asks[0].price - self.bids[0].price

    @property
    def is_crossed(self) -> bool:
        return bool(self.bids and self.asks and self.bids[0].price >= self.asks[0].price)


@dataclass(slots=True)
class PriceBuckets:
    """Resting size per price bucket for one book at one time.

    Bucket keys are the lower edge of each bucket (``floor(price / size) * size``).
    """

    exchange: str
    symbol: str
    timestamp: datetime
    bucket_size: Decimal
    bid_buckets: dict[Decimal, Decimal] = field(default_factory=dict)
    ask_buckets: dict[Decimal, Decimal] = field(default_factory=dict)

    def bucket_of(self, price: Decimal) -> Decimal:
        return (price // self.bucket_size) * self.bucket_size

    def add(self, side: Side, price: Decimal, size: Decimal) -> None:
        target = self.bid_buckets if side == "bid" else self.ask_buckets
        key = self.bucket_of(price)
        target[key] = target.get(key, Decimal(0)) + size

    @classmethod
    def from_snapshot(cls, snapshot: OrderBookSnapshot, bucket_size: Decimal) -> "PriceBuckets":
        buckets = cls(snapshot.exchange, snapshot.symbol, snapshot.timestamp, bucket_size)
        for level in snapshot.bids:
            buckets.add("bid", level.price, level.size)
        for level in snapshot.asks:
            buckets.add("ask", level.price, level.size)
        return buckets


@dataclass(slots=True)
class HeatmapData:
    """A time-by-price liquidity matrix for one symbol (one exchange or ``"all"``)."""

    symbol: str
    exchange: str
    bucket_size: float
    times: list[datetime]
    price_buckets: list[float]
    bid_size: list[list[float]]  # [time index][bucket index]
    ask_size: list[list[float]]

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.times), len(self.price_buckets))


class ConnectionState(str, Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    STOPPED = "stopped"


@dataclass(slots=True)
class ConnectionStatus:
    exchange: str
    state: ConnectionState
    since_us: int
    last_frame_us: int | None = None
    reconnects: int = 0
    frames: int = 0
    detail: str = ""
    #: The shard of a split exchange ("1", "2", ...); empty for a whole exchange.
    shard: str = ""

    @property
    def feed(self) -> str:
        """Whose status this is: ``okx``, or ``okx@2`` for a shard (its Redis key goes by it)."""
        return feed_name(self.exchange, self.shard)

    def as_redis_hash(self) -> dict[str, str]:
        return {
            "exchange": self.exchange,
            "shard": self.shard,
            "state": self.state.value,
            "since_us": str(self.since_us),
            "last_frame_us": "" if self.last_frame_us is None else str(self.last_frame_us),
            "reconnects": str(self.reconnects),
            "frames": str(self.frames),
            "detail": self.detail,
        }
