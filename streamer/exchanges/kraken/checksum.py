"""Kraken spot WebSocket v1 book checksum.

The CRC32 (unsigned) of one string: the top 10 asks (lowest price first), then
the top 10 bids (highest price first); for each level the price and then the
volume, each with the decimal point removed and leading zeros stripped, all
concatenated without separators. The strings must be the exchange's own, which
is why the order book keeps them.
"""

from __future__ import annotations

from typing import Sequence
from zlib import crc32

from ...models import RawLevel

CHECKSUM_LEVELS = 10

# The checksum runs after every frame over the same twenty levels, which
# change slowly: each level's checksum form is kept once computed. Bounded:
# cleared when it grows past this many levels.
_FRAGMENTS: dict[RawLevel, str] = {}
_FRAGMENTS_MAX = 200_000


def _fragment(level: RawLevel) -> str:
    """A level's price then size, each without its decimal point and leading zeros (cached)."""
    if len(_FRAGMENTS) >= _FRAGMENTS_MAX:
        _FRAGMENTS.clear()
    price, size = level
    value = _FRAGMENTS[level] = price.replace(".", "").lstrip("0") + size.replace(".", "").lstrip("0")
    return value


def kraken_checksum(asks_top10: Sequence[RawLevel], bids_top10: Sequence[RawLevel]) -> int:
    """Checksum of a book given its best asks (ascending) and best bids (descending)."""
    known = _FRAGMENTS.get
    # "or" falls through for an uncached level, and for a cached empty fragment
    # (price and size all zeros), which _fragment recomputes as empty again.
    parts = [known(level) or _fragment(level) for level in asks_top10[:CHECKSUM_LEVELS]]
    parts += [known(level) or _fragment(level) for level in bids_top10[:CHECKSUM_LEVELS]]
    return crc32("".join(parts).encode("ascii"))
