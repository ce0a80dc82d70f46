"""OKX v5 book checksum.

The CRC32 of the top 25 bids and asks interleaved as
``bidPx:bidSz:askPx:askSz:...`` using the exchange's own strings; when one side
has fewer levels the other continues alone. OKX sends the result as a signed
32-bit integer.
"""

from __future__ import annotations

from typing import Sequence
from zlib import crc32

from ...models import RawLevel

CHECKSUM_LEVELS = 25


def okx_checksum(bids: Sequence[RawLevel], asks: Sequence[RawLevel]) -> int:
    """Signed CRC32 of the best 25 bids (descending) and asks (ascending)."""
    parts: list[str] = []
    nb, na = min(len(bids), CHECKSUM_LEVELS), min(len(asks), CHECKSUM_LEVELS)
    for i in range(max(nb, na)):
        if i < nb:
            parts.extend(bids[i])
        if i < na:
            parts.extend(asks[i])
    value = crc32(":".join(parts).encode("ascii"))
    return value - 0x1_0000_0000 if value & 0x8000_0000 else value
