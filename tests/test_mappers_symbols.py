"""Symbol validation and normalization, including the exchanges' recorded instrument lists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamer.capture.reader import iter_records
from streamer.errors import InvalidSymbolError
from streamer.exchanges.registry import get_mapper
from streamer.symbols import canonical_asset, join_symbol, split_by_quote, split_symbol, validate_symbol

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("raw,normalized", [
    ("BTC-USDT", "BTC-USDT"), (" eth-usd ", "ETH-USD"), ("UNI-USD-SWAP", "UNI-USD-SWAP"),
    ("BTC-USD-220527", "BTC-USD-220527"), ("ETH2.S-ETH", "ETH2.S-ETH"), ("1000SATS-USDT", "1000SATS-USDT"),
])
def test_valid_symbols(raw, normalized):
    assert validate_symbol(raw) == normalized


@pytest.mark.parametrize("raw", ["BTCUSDT", "BTC/USD", "BTC-", "-USD", "BTC--USD", "BTC-US D", "", ".X-Y", 42, None])
def test_invalid_symbols(raw):
    with pytest.raises(InvalidSymbolError):
        validate_symbol(raw)


def test_helpers():
    assert canonical_asset("xbt") == "BTC" and canonical_asset("XDG") == "DOGE" and canonical_asset("ETH") == "ETH"
    assert join_symbol("XBT", "usd") == "BTC-USD"
    assert split_symbol("UNI-USD-SWAP") == ("UNI", "USD")
    assert split_by_quote("RUNEEUR") == ("RUNE", "EUR")
    assert split_by_quote("BTCFDUSD") == ("BTC", "FDUSD")  # the longest quote wins over USD
    assert split_by_quote("USDT") is None and split_by_quote("ABCXYZ") is None


def _http_bodies(session: str) -> dict[str, str]:
    configured = Path(os.environ.get("COBY_CAPTURES_DIR", "../shared/fixtures/captures"))
    path = (configured if configured.is_absolute() else REPO / configured) / session
    if not path.is_file():
        pytest.skip(f"recorded session {session} not found (set COBY_CAPTURES_DIR)")
    return {rec["url"]: rec["data"] for rec in iter_records(path, skip_meta=True) if rec["dir"] == "http"}


@pytest.mark.parametrize("exchange,session,path,natives,expected", [
    ("binance", "binance-spot.session1.jsonl.gz", "/api/v3/exchangeInfo",
     ["NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR"], ["NKN-USDT", "BLZ-ETH", "LRC-BTC", "RUNE-EUR"]),
    ("kraken", "kraken-spot.session1.jsonl.gz", "/0/public/AssetPairs",
     ["XBT/CHF", "KSM/XBT", "WAVES/EUR"], ["BTC-CHF", "KSM-BTC", "WAVES-EUR"]),
    ("okx", "okx.session1.jsonl.gz", "/api/v5/public/instruments?instType=SPOT",
     ["BTC-USDT"], ["BTC-USDT"]),
])
def test_recorded_instrument_lists_normalize_the_session_symbols(exchange, session, path, natives, expected):
    bodies = _http_bodies(session)
    mapper = get_mapper(exchange)
    request = mapper.instruments_request()
    query = "&".join(f"{k}={v}" for k, v in request.params.items())
    assert request.path + (f"?{query}" if query else "") == path
    body = next(data for url, data in bodies.items() if url.endswith(path))
    instruments = mapper.map_instruments(body)
    assert len(instruments) > 100
    by_native = {i.native_symbol: i for i in instruments}
    mapper.load_instruments(instruments)
    for native, symbol in zip(natives, expected):
        assert by_native[native].symbol == symbol
        assert mapper.normalize_symbol(native) == symbol
        assert mapper.native_symbol(symbol) == native
    # Every listed instrument round-trips between the two spellings.
    for instrument in instruments:
        assert mapper.native_symbol(instrument.symbol) == instrument.native_symbol
