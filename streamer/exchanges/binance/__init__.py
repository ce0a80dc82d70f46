"""Binance spot: combined-stream WebSocket and REST depth snapshots."""

from .mapper import BinanceSpotMapper, BinanceSyncRules

__all__ = ["BinanceSpotMapper", "BinanceSyncRules"]
