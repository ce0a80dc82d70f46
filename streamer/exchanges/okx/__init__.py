"""OKX v5 public WebSocket: in-band snapshots, seqId chain and CRC32 checksums."""

from .checksum import okx_checksum
from .mapper import OkxMapper, OkxSyncRules

__all__ = ["OkxMapper", "OkxSyncRules", "okx_checksum"]
