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

# The checksum runs after every frame over the same few dozen strings, which
# change slowly: each string's checksum form is kept once computed. Bounded:
# cleared when it grows past this many strings.
_FRAGMENTS: dict[str, str] = {}
_FRAGMENTS_MAX = 200_000


def _fragment(field: str) -> str:
    """``field`` without its decimal point and leading zeros (cached)."""
    if len(_FRAGMENTS) >= _FRAGMENTS_MAX:
        _FRAGMENTS.clear()
    value = _FRAGMENTS[field] = field.replace(".", "").lstrip("0")
    return value


def kraken_checksum(asks_top10: Sequence[RawLevel], bids_top10: Sequence[RawLevel]) -> int:
    """Checksum of a book given its best asks (ascending) and best bids (descending)."""
    known = _FRAGMENTS.get
    # "or" falls through for an uncached field, and for a cached empty fragment
    # (a zero), which _fragment recomputes as empty again: same result.
    parts = [known(f) or _fragment(f) for level in asks_top10[:CHECKSUM_LEVELS] for f in level]
    parts += [known(f) or _fragment(f) for level in bids_top10[:CHECKSUM_LEVELS] for f in level]
    return crc32("".join(parts).encode("ascii"))
