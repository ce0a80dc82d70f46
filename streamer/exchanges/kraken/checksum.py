"""Kraken spot WebSocket v1 book checksum.

The CRC32 (unsigned) of one string: the top 10 asks (lowest price first), then
the top 10 bids (highest price first); for each level the price and then the
volume, each with the decimal point removed and leading zeros stripped, all
concatenated without separators. The strings must be the exchange's own, which
is why the order book keeps them.
"""

from __future__ import annotations

import re
from typing import Sequence
from zlib import crc32

from ...models import RawLevel

CHECKSUM_LEVELS = 10
_LEADING_ZEROS = re.compile(r" 0+")


def kraken_checksum(asks_top10: Sequence[RawLevel], bids_top10: Sequence[RawLevel]) -> int:
    """Checksum of a book given its best asks (ascending) and best bids (descending)."""
    fields = [f for level in asks_top10[:CHECKSUM_LEVELS] for f in level]
    fields += [f for level in bids_top10[:CHECKSUM_LEVELS] for f in level]
    # One pass over a space-separated string is cheaper than per-field work:
    # drop every '.', strip each field's leading zeros, then drop the separators.
    text = _LEADING_ZEROS.sub(" ", " " + " ".join(fields).replace(".", "")).replace(" ", "")
    return crc32(text.encode("ascii"))
