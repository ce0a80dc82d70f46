"""The raw-data contract: COBY's tables, their Arrow schemas and the Redis key layout.

Declared once here and imported by the streamer (which writes) and the
pipeline (which reads). PostgreSQL DDL and Arrow schemas are both generated
from the same :class:`Column` declarations, so they cannot drift apart; a
test checks the live database against the Arrow schemas.

Timestamps are ``timestamptz`` in PostgreSQL and ``timestamp[us, UTC]`` in
Arrow. Prices and sizes are ``double precision`` / ``float64``: every exchange
decimal string with up to 15 significant digits round-trips exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import pyarrow as pa

# Logical type -> (PostgreSQL type, Arrow type). The single place types are mapped.
TYPES: dict[str, tuple[str, pa.DataType]] = {
    "timestamp": ("timestamptz", pa.timestamp("us", tz="UTC")),
    "text": ("text", pa.string()),
    "float": ("double precision", pa.float64()),
    "bigint": ("bigint", pa.int64()),
    "int": ("integer", pa.int32()),
    "smallint": ("smallint", pa.int16()),
    "bool": ("boolean", pa.bool_()),
}

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def validate_identifier(name: str) -> str:
    """Raise ValueError unless ``name`` is a plain lower-case SQL identifier."""
    if not _IDENT.match(name):
        raise ValueError(f"not a valid identifier: {name!r}")
    return name


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool = False
    doc: str = ""

    @property
    def pg_type(self) -> str:
        return TYPES[self.type][0]

    @property
    def arrow_type(self) -> pa.DataType:
        return TYPES[self.type][1]


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    doc: str
    #: Column the table is partitioned (or made a hypertable) by; None = plain table.
    time_column: str | None = "local_ts"
    primary_key: tuple[str, ...] = ()

    def __hash__(self) -> int:
        # Tables key the per-record row dicts on the hot path; the generated
        # hash would walk every column on each lookup. Names are unique.
        return hash(self.name)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def arrow_schema(self, *, drop: Iterable[str] = ()) -> pa.Schema:
        dropped = set(drop)
        return pa.schema(
            [pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in self.columns if c.name not in dropped],
            metadata={"coby.table": self.name},
        )

    def create_sql(self, schema: str, *, partitioned: bool) -> str:
        """``CREATE TABLE IF NOT EXISTS``; range-partitioned by time when asked."""
        validate_identifier(schema)
        cols = [f"{c.name} {c.pg_type}{'' if c.nullable else ' NOT NULL'}" for c in self.columns]
        if self.primary_key:
            cols.append(f"PRIMARY KEY ({', '.join(self.primary_key)})")
        sql = f"CREATE TABLE IF NOT EXISTS {schema}.{self.name} (\n    " + ",\n    ".join(cols) + "\n)"
        if partitioned and self.time_column:
            sql += f" PARTITION BY RANGE ({self.time_column})"
        return sql


def _t(name: str, type_: str, doc: str = "", nullable: bool = False) -> Column:
    return Column(validate_identifier(name), type_, nullable, doc)


_LOCAL_TS = _t("local_ts", "timestamp", "when COBY received the frame (UTC)")
_EXCHANGE_TS = _t("exchange_ts", "timestamp", "the exchange's own event time, where it sends one", nullable=True)
_EXCHANGE = _t("exchange", "text", "exchange id, e.g. binance")
_SYMBOL = _t("symbol", "text", "normalized symbol, e.g. BTC-USDT")

BOOK_UPDATES = Table(
    "book_updates",
    (
        _LOCAL_TS,
        _EXCHANGE_TS,
        _EXCHANGE,
        _SYMBOL,
        _t("side", "text", "bid or ask"),
        _t("price", "float"),
        _t("size", "float", "new absolute size at this price; 0 deletes the level"),
        _t("is_snapshot", "bool", "true for the levels of a (re)synchronising snapshot"),
        _t("seq", "bigint", "exchange sequence id of the frame (Binance u, OKX seqId)", nullable=True),
        _t("prev_seq", "bigint", "previous sequence id the frame links to (Binance U-1, OKX prevSeqId)", nullable=True),
    ),
    "Every level change applied to a synchronised book, snapshots included.",
)

TRADES = Table(
    "trades",
    (
        _LOCAL_TS,
        _EXCHANGE_TS,
        _EXCHANGE,
        _SYMBOL,
        _t("trade_id", "text"),
        _t("price", "float"),
        _t("size", "float"),
        _t("side", "text", "taker side: buy or sell"),
    ),
    "Every trade, taker side.",
)

BOOK_SNAPSHOTS = Table(
    "book_snapshots",
    (
        _LOCAL_TS,
        _EXCHANGE,
        _SYMBOL,
        _t("side", "text", "bid or ask"),
        _t("level", "smallint", "0 is the best level"),
        _t("price", "float"),
        _t("size", "float"),
        _t("seq", "bigint", "sequence id of the last applied frame", nullable=True),
    ),
    "Periodic snapshots of every synchronised book (top N levels or a band around mid).",
)

#: ``detail`` of the ``disconnected`` feed event of a deliberate stop (not a failure).
STOPPED = "stopped"
#: Starts the ``symbol`` of a shard's connection events (``@2``); no symbol starts with it.
CONNECTION_LABEL_PREFIX = "@"


def feed_name(exchange: str, shard: str = "") -> str:
    """A feed's name: ``okx`` for an exchange on one connection, ``okx@2`` for
    its second shard. Checkpoint streams and Redis status keys go by it."""
    return f"{exchange}@{shard}" if shard else exchange


def connection_label(shard: str = "") -> str:
    """``symbol`` of a feed's connection events: "" for a whole exchange, ``@2`` for shard 2."""
    return CONNECTION_LABEL_PREFIX + shard if shard else ""


FEED_EVENTS = Table(
    "feed_events",
    (
        _LOCAL_TS,
        _EXCHANGE,
        _t("symbol", "text", "empty for connection-wide events"),
        _t("event", "text", "synced, gap, checksum_failed, resync, crossed, connected, disconnected, stall, error"),
        _t("detail", "text", f"free text; '{STOPPED}' on a disconnected event: the streamer stopped on purpose"),
    ),
    "What happened to books and connections: gaps, resyncs, checksum failures, disconnects.",
)

QUARANTINE = Table(
    "quarantine",
    (
        _LOCAL_TS,
        _EXCHANGE,
        _t("code", "text", "error code, e.g. MAP-003"),
        _t("reason", "text"),
        _t("raw", "text", "the raw frame (binary frames base64-encoded)"),
    ),
    "Frames that could not be used, with the reason.",
)

INSTRUMENTS = Table(
    "instruments",
    (
        _EXCHANGE,
        _SYMBOL,
        _t("native_symbol", "text", "the exchange's own spelling"),
        _t("first_seen", "timestamp"),
    ),
    "Symbols seen per exchange and their exchange-native names.",
    time_column=None,
    primary_key=("exchange", "symbol"),
)

#: Not market data: how far each feed's journal has reached PostgreSQL. Updated in
#: the same transaction as the rows, so after a crash or an outage re-processing
#: the journal from here on never duplicates a row (see streamer.durability).
INGEST_CHECKPOINTS = Table(
    "ingest_checkpoints",
    (
        _t("stream", "text", "the feed's journal, e.g. binance"),
        _t("seq", "bigint", "last journal record whose rows are all stored"),
        _t("updated_at", "timestamp"),
    ),
    "Durability checkpoints of the streamer's journals.",
    time_column=None,
    primary_key=("stream",),
)

#: Tables the streamer writes, in creation order.
TABLES: tuple[Table, ...] = (BOOK_UPDATES, TRADES, BOOK_SNAPSHOTS, FEED_EVENTS, QUARANTINE, INSTRUMENTS)
TABLES_BY_NAME = {t.name: t for t in TABLES}

#: Arrow schemas of the replay dataset files (exchange and symbol live in the Hive path too).
REPLAY_KINDS: dict[str, Table] = {"book_updates": BOOK_UPDATES, "book_snapshots": BOOK_SNAPSHOTS, "trades": TRADES}


# ---------------------------------------------------------------------------
# Redis key layout (documented in README for the orchestrator's authors).
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisKeys:
    """Key names under one prefix (default ``coby:``).

    - ``{prefix}book:{exchange}:{symbol}``: string, JSON of the latest synchronised
      book: ``{"exchange", "symbol", "native_symbol", "local_ts", "exchange_ts",
      "seq", "bids": [[price, size], ...], "asks": [[price, size], ...]}``, best
      levels first, prices and sizes as the exchange's decimal strings, times in
      microseconds since the epoch. Deleted while the book is resynchronising.
    - ``{prefix}books``: set of ``{exchange}:{symbol}`` with a live book key.
    - ``{prefix}trades:{exchange}:{symbol}``: stream, capped (``MAXLEN ~``), one
      entry per trade with fields ``trade_id, price, size, side, local_ts, exchange_ts``.
    - ``{prefix}status:{exchange}``: hash, connection status (see
      :meth:`streamer.models.ConnectionStatus.as_redis_hash`). An exchange whose
      symbols are split over several connections (shards, see :mod:`streamer.shards`)
      has one per connection instead: ``{prefix}status:{exchange}@{shard}``.
    - ``{prefix}updates``: pub/sub channel; each message is ``{exchange}:{symbol}``
      of a book that just changed.
    """

    prefix: str = "coby:"

    def book(self, exchange: str, symbol: str) -> str:
        return f"{self.prefix}book:{exchange}:{symbol}"

    @property
    def books(self) -> str:
        return f"{self.prefix}books"

    def trades(self, exchange: str, symbol: str) -> str:
        return f"{self.prefix}trades:{exchange}:{symbol}"

    def status(self, feed: str) -> str:
        """``feed``: the exchange, or ``exchange@shard`` for one connection of a split exchange."""
        return f"{self.prefix}status:{feed}"

    @property
    def updates_channel(self) -> str:
        return f"{self.prefix}updates"
