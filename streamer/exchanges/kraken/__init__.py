"""Kraken spot WebSocket v1: in-band snapshots and CRC32 checksums."""

from .checksum import kraken_checksum
from .mapper import KrakenSpotMapper, KrakenSyncRules

__all__ = ["KrakenSpotMapper", "KrakenSyncRules", "kraken_checksum"]
