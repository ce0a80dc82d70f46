"""Order books and their synchronisation (pure logic, no I/O)."""

from .orderbook import OrderBook, parse_levels
from .sync import BookSync, Link, SyncOutcome, SyncRules, SyncState

__all__ = ["BookSync", "Link", "OrderBook", "SyncOutcome", "SyncRules", "SyncState", "parse_levels"]
