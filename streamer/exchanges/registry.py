"""Exchange id -> mapper class, and the protocol aliases of capture replay."""

from __future__ import annotations

from typing import Any

from ..errors import UnknownExchangeError
from .base import ExchangeMapper
from .binance.mapper import BinanceSpotMapper
from .kraken.mapper import KrakenSpotMapper
from .okx.mapper import OkxMapper

MAPPERS: dict[str, type[ExchangeMapper]] = {
    "binance": BinanceSpotMapper,
    "kraken": KrakenSpotMapper,
    "okx": OkxMapper,
}

#: Venues that speak one of the supported protocols under another name
#: (``coby capture replay --exchange``): they map to that protocol's mapper.
PROTOCOL_ALIASES: dict[str, str] = {
    "binance.us": "binance",
    "binance-us": "binance",
    "binance-tr": "binance",
    "okcoin": "okx",
}


def get_mapper(exchange: str, **options: Any) -> ExchangeMapper:
    """A new mapper for ``exchange`` (one per connection; mappers may hold
    protocol state). ``options`` go to the mapper's constructor, for example
    ``get_mapper("kraken", book_depth=1000)``."""
    key = exchange.strip().lower() if isinstance(exchange, str) else exchange
    cls = MAPPERS.get(key)
    if cls is None:
        known = ", ".join(sorted(MAPPERS))
        raise UnknownExchangeError(f"unknown exchange {exchange!r}; supported: {known}")
    return cls(**options)
