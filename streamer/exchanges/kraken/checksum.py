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
_FRAGMENTS_MAX = 200_000


class _Fragments(dict):
    """Level -> its checksum form; a lookup of a level not seen yet computes it.

    A dict subclass with ``__missing__``, so that the lookups (twenty per
    frame) run in C through ``map`` and only a new level takes the Python path.
    """

    def __missing__(self, level: RawLevel) -> str:
        if len(self) >= _FRAGMENTS_MAX:
            self.clear()
        price, size = level
        value = self[level] = price.replace(".", "").lstrip("0") + size.replace(".", "").lstrip("0")
        return value


_FRAGMENTS = _Fragments()
_fragment = _FRAGMENTS.__getitem__


def kraken_checksum(asks_top10: Sequence[RawLevel], bids_top10: Sequence[RawLevel]) -> int:
    """Checksum of a book given its best asks (ascending) and best bids (descending)."""
    parts = list(map(_fragment, asks_top10[:CHECKSUM_LEVELS]))
    parts += map(_fragment, bids_top10[:CHECKSUM_LEVELS])
    return crc32("".join(parts).encode("ascii"))
