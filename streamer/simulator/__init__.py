"""The market simulator: a synthetic exchange served in the Binance spot,
Kraken spot WebSocket v1 and OKX v5 protocols, with valid sequence numbers
and checksums, for the demo, long-running tests and load tests.

- :mod:`.market`: order-book dynamics, no I/O, deterministic given a seed;
- :mod:`.binance`, :mod:`.kraken`, :mod:`.okx`: per-connection protocol
  renderers and REST answers (no I/O), sharing :mod:`.protocols`;
- :mod:`.backend`: the ``ExchangeBackend`` of the local exchange server and
  :func:`run_simulated_exchanges`.
"""

from .backend import (
    DEFAULT_SYMBOLS,
    DEMO_SYMBOLS,
    PROTOCOLS,
    WS_PATHS,
    SimulatedExchanges,
    SimulatorBackend,
    resolve_symbols,
    run_simulated_exchanges,
)
from .market import LevelChange, MarketEvent, MarketParams, MarketSimulator, MarketTrade, SimBook, SimSymbol

__all__ = [
    "DEFAULT_SYMBOLS",
    "DEMO_SYMBOLS",
    "PROTOCOLS",
    "WS_PATHS",
    "LevelChange",
    "MarketEvent",
    "MarketParams",
    "MarketSimulator",
    "MarketTrade",
    "SimBook",
    "SimSymbol",
    "SimulatedExchanges",
    "SimulatorBackend",
    "resolve_symbols",
    "run_simulated_exchanges",
]
