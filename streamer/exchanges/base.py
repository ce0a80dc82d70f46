"""The interface every exchange mapper implements.

A mapper is pure protocol knowledge with no I/O (the tardis-node model): it
says which messages to send to subscribe, which REST request fetches a book
snapshot, and turns each raw frame (WebSocket text/bytes or a REST body) into
normalized events. Live connections and capture replay feed the same mapper.
"""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..book.orderbook import is_decimal
from ..errors import InvalidValueError, MalformedFrameError, MappingError
from ..models import MappedEvent, Quarantine

if TYPE_CHECKING:  # pragma: no cover
    from ..book.sync import SyncRules


@dataclass(frozen=True)
class Endpoints:
    """Where an exchange is. Both are overridable per exchange from the
    environment (``COBY_<EXCHANGE>_WS_URL``, ``COBY_<EXCHANGE>_REST_URL``)."""

    ws_url: str
    rest_url: str | None = None


@dataclass(frozen=True)
class RestRequest:
    """A GET relative to ``Endpoints.rest_url``."""

    path: str
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Instrument:
    symbol: str  # normalized, e.g. BTC-USDT
    native_symbol: str  # exchange spelling, e.g. BTCUSDT, XBT/USD, BTC-USDT
    base: str
    quote: str


class ExchangeMapper(ABC):
    """Protocol knowledge of one exchange API. Holds no connections.

    A mapper instance may keep small protocol state (for example Kraken's
    channel ids), so each connection gets its own instance.
    """

    #: Exchange id used in tables, Redis keys and the CLI (``binance``, ``kraken``, ``okx``).
    exchange: str
    default_endpoints: Endpoints
    #: Seconds between application-level pings the client must send (None: none needed).
    ping_interval: float | None = None

    # -- instruments ------------------------------------------------------
    def instruments_request(self) -> RestRequest | None:
        """REST request for instrument metadata, used to normalize symbols."""
        return None

    def map_instruments(self, body: str) -> list[Instrument]:
        return []

    def __init__(self) -> None:
        self._instruments: dict[str, Instrument] = {}  # native -> instrument, from metadata
        self._natives: dict[str, str] = {}  # normalized -> native, from metadata
        self._symbols: dict[str, str] = {}  # native -> normalized: the hot path's cache

    def load_instruments(self, instruments: list[Instrument]) -> None:
        """Teach the mapper the exchange's symbol table."""
        self._instruments = {i.native_symbol: i for i in instruments}
        self._natives = {i.symbol: i.native_symbol for i in instruments}
        self._symbols.clear()

    def normalize_symbol(self, native_symbol: str) -> str:
        """Exchange spelling -> ``BASE-QUOTE``: from instrument metadata when
        loaded, else by the exchange's naming rules. Raises UnknownSymbolError."""
        symbol = self._symbols.get(native_symbol)
        if symbol is None:
            instrument = self._instruments.get(native_symbol)
            symbol = instrument.symbol if instrument is not None else self._symbol_by_rule(native_symbol)
            self._symbols[native_symbol] = symbol
        return symbol

    def native_symbol(self, symbol: str) -> str:
        """``BASE-QUOTE`` -> exchange spelling."""
        from ..symbols import validate_symbol

        symbol = validate_symbol(symbol)
        native = self._natives.get(symbol)
        return native if native is not None else self._native_by_rule(symbol)

    @abstractmethod
    def _symbol_by_rule(self, native_symbol: str) -> str:
        """Normalize a native symbol without metadata (raise UnknownSymbolError if impossible)."""

    @abstractmethod
    def _native_by_rule(self, symbol: str) -> str:
        """The native spelling of a validated normalized symbol without metadata."""

    # -- subscriptions ----------------------------------------------------
    @abstractmethod
    def ws_url(self, base_url: str, native_symbols: list[str]) -> str:
        """The URL to connect to (Binance puts streams in the URL)."""

    @abstractmethod
    def subscribe_messages(self, native_symbols: list[str]) -> list[str]:
        """Text frames to send after connecting (may be empty)."""

    def resubscribe_messages(self, native_symbol: str) -> list[str]:
        """Frames that make the exchange send a fresh in-band snapshot of one
        symbol (unsubscribe + subscribe of its book). Empty for exchanges
        whose snapshot comes from REST."""
        return []

    def snapshot_request(self, native_symbol: str) -> RestRequest | None:
        """REST request for a book snapshot, or None when snapshots arrive in-band."""
        return None

    def ping_message(self) -> str | None:
        return None

    # -- mapping ----------------------------------------------------------
    @abstractmethod
    def map_message(self, raw: str | bytes, local_ts: int) -> list[MappedEvent]:
        """One WebSocket frame -> events. Never raises: anything unusable
        becomes a :class:`~streamer.models.Quarantine` event with its reason."""

    def map_snapshot(self, native_symbol: str, body: str, local_ts: int) -> list[MappedEvent]:
        """A REST snapshot body -> a snapshot :class:`~streamer.models.BookMessage`."""
        raise NotImplementedError(f"{self.exchange} sends snapshots in-band")

    @abstractmethod
    def sync_rules(self) -> "SyncRules":
        """The exchange's book-sync rules (sequence alignment, checksum)."""


# ---------------------------------------------------------------------------
# Helpers shared by the mappers: decoding frames and quarantining failures.
# ---------------------------------------------------------------------------


def decode_json(raw: str | bytes) -> Any:
    """Parse a frame as JSON or raise :class:`MalformedFrameError`."""
    try:
        return orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise MalformedFrameError(f"not valid JSON: {exc}", code="MAP-002") from None


def raw_text(raw: str | bytes) -> str:
    """A frame as stored in quarantine: text as is, binary frames that are not
    UTF-8 base64-encoded (the contract's rule for the ``raw`` column)."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (bytes, bytearray, memoryview)):
        data = bytes(raw)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(data).decode("ascii")
    return repr(raw)


class BookFrameRejected(Exception):
    """A book frame of a named symbol failed to map (``cause`` says why).

    Mappers raise it once they know which book the frame belongs to, so that
    the quarantine record names that book and the processor can resync it at
    once: the book missed an update, whatever the next frame's sequence or
    checksum would show.
    """

    def __init__(self, native_symbol: str, cause: BaseException) -> None:
        super().__init__(native_symbol, cause)
        self.native_symbol = native_symbol
        self.cause = cause


def mapping_failure(exchange: str, raw: str | bytes, local_ts: int, exc: BaseException,
                    symbol: str | None = None) -> Quarantine:
    """The quarantine record for a frame a mapper could not use.

    :class:`MappingError` carries its own code and reason; structural surprises
    (a missing key, a wrong type) are malformed frames (MAP-002); anything else
    is still quarantined (MAP-001) because a mapper never raises. A
    :class:`BookFrameRejected` adds the book the frame was for.
    """
    book = None
    if isinstance(exc, BookFrameRejected):
        book, exc = exc.native_symbol, exc.cause
    if isinstance(exc, MappingError):
        code, reason = exc.code, exc.reason
    elif isinstance(exc, (KeyError, IndexError, TypeError, ValueError, AttributeError)):
        code, reason = "MAP-002", f"unexpected frame structure: {type(exc).__name__}: {exc}"
    else:
        code, reason = "MAP-001", f"mapping failed: {type(exc).__name__}: {exc}"
    return Quarantine(exchange, reason[:1000], raw_text(raw), local_ts, code, symbol, book)


#: Integers are stored as PostgreSQL ``bigint``.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: The last millisecond a timestamp column can hold (9999-12-31T23:59:59.999Z).
MAX_MILLIS = 253_402_300_799_999


def require_int(value: Any, what: str) -> int:
    """An integer field of a frame that fits a ``bigint`` (bools and floats are not integers here)."""
    if type(value) is not int:
        raise MalformedFrameError(f"{what} must be an integer, got {value!r}"[:300])
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise InvalidValueError(f"{what} does not fit a 64-bit integer: {value}"[:300])
    return value


def require_str(value: Any, what: str) -> str:
    if type(value) is not str or not value:
        raise MalformedFrameError(f"{what} must be a non-empty string, got {value!r}"[:300])
    return value


def millis_to_us(value: Any, what: str) -> int:
    """Exchange milliseconds (an integer or a string of digits) -> microseconds."""
    if type(value) is str and value.isascii() and value.isdigit() and len(value) <= 15:
        value = int(value)
    if type(value) is int and 0 <= value <= MAX_MILLIS:
        return value * 1000
    raise MalformedFrameError(f"{what} must be milliseconds since the epoch, got {value!r}"[:300])


def require_positive_decimal(value: Any, what: str) -> str:
    """A trade price or size: a plain decimal string greater than zero."""
    if type(value) is not str:
        raise MalformedFrameError(f"{what} must be a decimal string, got {value!r}"[:300])
    if is_decimal(value) is None or float(value) <= 0.0:
        raise InvalidValueError(f"{what} must be a positive decimal, got {value!r}"[:300])
    return value
