"""Normalized symbols: validation and the normalization helpers the mappers share.

A normalized symbol is ``BASE-QUOTE`` in upper case (``BTC-USDT``). Derivatives
keep the extra parts of the exchange's instrument id (OKX ``UNI-USD-SWAP``,
``BTC-USD-220527``). Asset codes are letters and digits, optionally with a dot
inside (Kraken's ``ETH2.S``). Exchange-specific aliases are translated to the
common code (Kraken ``XBT`` is ``BTC``, ``XDG`` is ``DOGE``).
"""

from __future__ import annotations

import re
from typing import Iterable

from .errors import InvalidSymbolError

_ASSET = r"[A-Z0-9]+(?:\.[A-Z0-9]+)?"
_SYMBOL = re.compile(rf"{_ASSET}-{_ASSET}(?:-{_ASSET})*\Z")
_ASSET_RE = re.compile(rf"{_ASSET}\Z")

#: Exchange asset codes that name the same asset as a common code.
ASSET_ALIASES: dict[str, str] = {"XBT": "BTC", "XDG": "DOGE"}

#: Quote assets tried (longest first) when a concatenated symbol such as
#: ``NKNUSDT`` must be split without the exchange's instrument metadata.
KNOWN_QUOTES: tuple[str, ...] = tuple(
    sorted(
        {
            "USDT", "USDC", "BUSD", "FDUSD", "TUSD", "USDP", "DAI", "UST", "PAX",
            "BTC", "ETH", "BNB", "XRP", "TRX", "DOGE", "DOT", "SOL",
            "EUR", "TRY", "USD", "GBP", "AUD", "BRL", "RUB", "UAH", "NGN", "ZAR", "IDRT", "BIDR",
            "JPY", "ARS", "PLN", "RON", "MXN", "COP", "CZK", "AEUR", "EURI",
        },
        key=lambda q: (-len(q), q),
    )
)


def validate_symbol(symbol: str) -> str:
    """Return ``symbol`` in normalized form (trimmed, upper case) or raise
    :class:`~streamer.errors.InvalidSymbolError`."""
    if not isinstance(symbol, str):
        raise InvalidSymbolError(f"symbol must be a string, got {type(symbol).__name__}")
    normalized = symbol.strip().upper()
    if not _SYMBOL.match(normalized):
        raise InvalidSymbolError(f"not a BASE-QUOTE symbol: {symbol!r}")
    return normalized


def canonical_asset(code: str) -> str:
    """An exchange asset code in its common spelling (``XBT`` -> ``BTC``)."""
    code = code.upper()
    return ASSET_ALIASES.get(code, code)


def exchange_asset(code: str, aliases: dict[str, str]) -> str:
    """The reverse of :func:`canonical_asset` for one exchange's alias table
    (``{"XBT": "BTC"}``): ``BTC`` -> ``XBT``."""
    for native, common in aliases.items():
        if common == code:
            return native
    return code


def join_symbol(base: str, quote: str) -> str:
    """``("XBT", "usd")`` -> ``"BTC-USD"``; raises InvalidSymbolError on bad codes."""
    symbol = f"{canonical_asset(base)}-{canonical_asset(quote)}"
    return validate_symbol(symbol)


def split_symbol(symbol: str) -> tuple[str, str]:
    """``"BTC-USDT"`` -> ``("BTC", "USDT")``. Derivative suffixes are dropped."""
    parts = validate_symbol(symbol).split("-")
    return parts[0], parts[1]


def split_by_quote(native: str, quotes: Iterable[str] = KNOWN_QUOTES) -> tuple[str, str] | None:
    """Split a concatenated symbol (``NKNUSDT``) by the longest known quote
    suffix; ``None`` when no quote matches or nothing would be left for the base."""
    upper = native.upper()
    for quote in quotes:
        if upper.endswith(quote) and len(upper) > len(quote):
            base = upper[: -len(quote)]
            if _ASSET_RE.match(base):
                return base, quote
    return None
