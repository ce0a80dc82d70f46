"""The interface every exchange mapper implements.

A mapper is pure protocol knowledge with no I/O (the tardis-node model): it
says which messages to send to subscribe, which REST request fetches a book
snapshot, and turns each raw frame (WebSocket text/bytes or a REST body) into
normalized events. Live connections and capture replay feed the same mapper.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..models import MappedEvent

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

    @abstractmethod
    def normalize_symbol(self, native_symbol: str) -> str:
        """Exchange spelling -> ``BASE-QUOTE`` (uses instrument metadata when loaded)."""

    @abstractmethod
    def native_symbol(self, symbol: str) -> str:
        """``BASE-QUOTE`` -> exchange spelling."""

    def load_instruments(self, instruments: list[Instrument]) -> None:
        """Teach the mapper the exchange's symbol table."""

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
