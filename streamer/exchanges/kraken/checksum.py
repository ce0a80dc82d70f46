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

from ...book.orderbook import OrderBook
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


def _side_text(levels: Sequence[RawLevel]) -> bytes:
    return "".join(map(_fragment, levels[:CHECKSUM_LEVELS])).encode("ascii")


def kraken_checksum(asks_top10: Sequence[RawLevel], bids_top10: Sequence[RawLevel]) -> int:
    """Checksum of a book given its best asks (ascending) and best bids (descending)."""
    return crc32(_side_text(bids_top10), crc32(_side_text(asks_top10)))


def book_checksum(book: OrderBook) -> int:
    """:func:`kraken_checksum` of a live book, reusing the side no frame touched.

    The CRC runs over the asks' text, then the bids': the asks' CRC is the
    starting value of the bids' part. Both are kept (the asks' CRC, the bids'
    text) with their side's version in the book's ``checksum_memo``, and only
    a side whose version moved is read again: a Kraken frame updates one side.
    """
    memo = book.checksum_memo
    ask_version, bid_version = book.ask_version, book.bid_version
    if type(memo) is tuple and memo[0] == ask_version:
        ask_crc = memo[1]
    else:
        ask_crc = crc32(_side_text(book.top("ask", CHECKSUM_LEVELS)))
    if type(memo) is tuple and memo[2] == bid_version:
        bid_text = memo[3]
    else:
        bid_text = _side_text(book.top("bid", CHECKSUM_LEVELS))
    book.checksum_memo = (ask_version, ask_crc, bid_version, bid_text)
    return crc32(bid_text, ask_crc)
