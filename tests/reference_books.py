"""Independent book rebuilds straight from capture JSON, for checking COBY's books.

Deliberately naive (dicts of Decimal, no COBY code) so that a bug in the
streamer's order book, mapper or sync logic cannot hide in the reference too.
"""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, urlparse


def _records(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def _apply(side: dict, levels) -> None:
    for level in levels:
        price, size = Decimal(level[0]), Decimal(level[1])
        if size == 0:
            side.pop(price, None)
        else:
            side[price] = size


def _best(bids: dict, asks: dict) -> tuple[tuple[Decimal, Decimal] | None, tuple[Decimal, Decimal] | None]:
    bid = max(bids.items()) if bids else None
    ask = min(asks.items()) if asks else None
    return bid, ask


def binance_books(path: Path) -> dict[str, tuple]:
    """Native symbol -> (best bid, best ask) after the whole session."""
    snapshots, diffs = {}, {}
    for rec in _records(path):
        if rec["dir"] == "http" and "/depth" in rec["url"]:
            symbol = parse_qs(urlparse(rec["url"]).query)["symbol"][0]
            snapshots[symbol] = json.loads(rec["data"])
        elif rec["dir"] == "recv":
            msg = json.loads(rec["data"])
            data = msg.get("data", msg)
            if isinstance(data, dict) and data.get("e") == "depthUpdate":
                diffs.setdefault(data["s"], []).append(data)
    books = {}
    for symbol, snap in snapshots.items():
        bids, asks = {}, {}
        _apply(bids, snap["bids"])
        _apply(asks, snap["asks"])
        last = snap["lastUpdateId"]
        for diff in sorted(diffs.get(symbol, []), key=lambda d: d["u"]):
            if diff["u"] <= last:
                continue
            _apply(bids, diff["b"])
            _apply(asks, diff["a"])
        books[symbol] = _best(bids, asks)
    return books


def kraken_books(path: Path) -> dict[str, tuple]:
    books: dict[str, tuple[dict, dict]] = {}
    for rec in _records(path):
        if rec["dir"] != "recv":
            continue
        msg = json.loads(rec["data"])
        if not isinstance(msg, list) or not str(msg[-2]).startswith("book"):
            continue
        pair = msg[-1]
        bids, asks = books.setdefault(pair, ({}, {}))
        for part in msg[1:-2]:
            if "as" in part or "bs" in part:
                bids.clear()
                asks.clear()
                _apply(asks, part.get("as", []))
                _apply(bids, part.get("bs", []))
            _apply(asks, part.get("a", []))
            _apply(bids, part.get("b", []))
    return {pair: _best(b, a) for pair, (b, a) in books.items()}


def okx_books(path: Path) -> dict[str, tuple]:
    books: dict[str, tuple[dict, dict]] = {}
    for rec in _records(path):
        if rec["dir"] != "recv" or not rec["data"].startswith("{"):
            continue
        msg = json.loads(rec["data"])
        arg = msg.get("arg", {})
        if not str(arg.get("channel", "")).startswith("books") or "data" not in msg:
            continue
        bids, asks = books.setdefault(arg["instId"], ({}, {}))
        for entry in msg["data"]:
            if msg.get("action") == "snapshot":
                bids.clear()
                asks.clear()
            _apply(bids, entry["bids"])
            _apply(asks, entry["asks"])
    return {inst: _best(b, a) for inst, (b, a) in books.items()}


REFERENCE = {"binance": binance_books, "kraken": kraken_books, "okx": okx_books}
CAPTURE_FILES = {
    "binance": "binance-spot.session1.jsonl.gz",
    "kraken": "kraken-spot.session1.jsonl.gz",
    "okx": "okx.session1.jsonl.gz",
}
