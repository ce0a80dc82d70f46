"""Real recorded sessions through mapper + BookSync, checked against books
rebuilt independently in this file straight from the raw JSON.

The reference rebuilds below deliberately use nothing from ``streamer``: plain
dicts keyed by Decimal, the exchanges' documented rules, and the raw frames.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlparse

import pytest

from streamer.book.sync import BookSync
from streamer.capture.reader import iter_records, payload
from streamer.exchanges.registry import get_mapper
from streamer.models import BookMessage, FeedEventKind, Quarantine

pytestmark = pytest.mark.captures

REPO = Path(__file__).resolve().parents[1]
FILES = {
    "binance": "binance-spot.session1.jsonl.gz",
    "kraken": "kraken-spot.session1.jsonl.gz",
    "okx": "okx.session1.jsonl.gz",
}
KRAKEN_DEPTH = 1000  # the session subscribed to book-1000


def captures_dir() -> Path:
    configured = Path(os.environ.get("COBY_CAPTURES_DIR", "../shared/fixtures/captures"))
    return configured if configured.is_absolute() else REPO / configured


def load(exchange: str) -> list[dict]:
    path = captures_dir() / FILES[exchange]
    if not path.is_file():
        pytest.skip(f"recorded session {path.name} not found in {captures_dir()} (set COBY_CAPTURES_DIR)")
    return list(iter_records(path, skip_meta=True))


def us(rec: dict) -> int:
    return int(rec["t"] * 1_000_000)


def depth_symbol(rec: dict) -> str | None:
    """The symbol of a Binance REST depth snapshot record (None for other HTTP records)."""
    url = urlparse(rec["url"])
    return parse_qs(url.query)["symbol"][0] if url.path.endswith("/depth") else None


# ---------------------------------------------------------------------------
# Independent reference books
# ---------------------------------------------------------------------------


class RefBook:
    """Decimal price -> (price string, size string); optional depth limit."""

    def __init__(self, depth: int | None = None) -> None:
        self.bids: dict[Decimal, tuple[str, str]] = {}
        self.asks: dict[Decimal, tuple[str, str]] = {}
        self.depth = depth

    def apply(self, side: str, levels: list) -> None:
        book = self.bids if side == "bid" else self.asks
        for level in levels:
            price, size = Decimal(level[0]), Decimal(level[1])
            if size == 0:
                book.pop(price, None)
            else:
                book[price] = (level[0], level[1])
        if self.depth is not None and len(book) > self.depth:
            keep = sorted(book, reverse=side == "bid")[: self.depth]
            for price in set(book) - set(keep):
                del book[price]

    def side(self, side: str) -> list[tuple[str, str]]:
        book = self.bids if side == "bid" else self.asks
        return [book[p] for p in sorted(book, reverse=side == "bid")]


def binance_reference(records: list[dict], upto: int | None = None) -> dict[str, RefBook]:
    """REST snapshot, then every diff with u > lastUpdateId in u order (optionally only u <= upto)."""
    snapshots, diffs = {}, {}
    for rec in records:
        if rec["dir"] == "http" and depth_symbol(rec):
            snapshots[depth_symbol(rec)] = json.loads(rec["data"])
        elif rec["dir"] == "recv":
            data = json.loads(rec["data"])["data"]
            if data.get("e") == "depthUpdate":
                diffs.setdefault(data["s"], []).append(data)
    books = {}
    for symbol, snap in snapshots.items():
        book = books[symbol] = RefBook()
        book.apply("bid", snap["bids"])
        book.apply("ask", snap["asks"])
        for diff in sorted(diffs.get(symbol, []), key=lambda d: d["u"]):
            if diff["u"] > snap["lastUpdateId"] and (upto is None or diff["u"] <= upto):
                book.apply("bid", diff["b"])
                book.apply("ask", diff["a"])
    return books


class KrakenReference:
    def __init__(self) -> None:
        self.books: dict[str, RefBook] = {}

    def feed(self, frame: list) -> None:
        pair = frame[-1]
        for part in frame[1:-2]:
            if "as" in part or "bs" in part:
                self.books[pair] = RefBook(KRAKEN_DEPTH)
            book = self.books[pair]
            # Kraken: apply the whole message, then truncate to the subscribed depth.
            book.apply("ask", part.get("as", []) + part.get("a", []))
            book.apply("bid", part.get("bs", []) + part.get("b", []))


class OkxReference:
    def __init__(self) -> None:
        self.books: dict[str, RefBook] = {}

    def feed(self, msg: dict) -> None:
        inst = msg["arg"]["instId"]
        if msg["action"] == "snapshot":
            self.books[inst] = RefBook()
        for entry in msg["data"]:
            self.books[inst].apply("bid", entry["bids"])
            self.books[inst].apply("ask", entry["asks"])


def kraken_book_frame(raw: str) -> list | None:
    msg = json.loads(raw)
    return msg if isinstance(msg, list) and str(msg[-2]).startswith("book-") else None


def okx_book_frame(raw: str) -> dict | None:
    if not raw.startswith("{"):
        return None
    msg = json.loads(raw)
    return msg if msg.get("arg", {}).get("channel") == "books" and "data" in msg else None


# ---------------------------------------------------------------------------
# Running a session through COBY
# ---------------------------------------------------------------------------


@dataclass
class Run:
    exchange: str
    mapper: object
    syncs: dict[str, BookSync] = field(default_factory=dict)
    quarantined: list[Quarantine] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)
    feed_events: list = field(default_factory=list)
    resync_requests: Counter = field(default_factory=Counter)

    def total(self, counter: str) -> int:
        return sum(getattr(s, counter) for s in self.syncs.values())


Injector = Callable[[str, int, Run], list[tuple[str, str, str]]]


def run_session(exchange: str, records: list[dict], *, skip: frozenset[int] = frozenset(),
                on_resync: Injector | None = None, inserts: dict[int, list[str | bytes]] | None = None) -> Run:
    """Feed every recv frame (and Binance's REST depth snapshots) through the
    mapper and one BookSync per symbol. ``skip`` drops records by index;
    ``inserts`` maps mapper input before a record; ``on_resync`` may answer a
    resync request with frames (``("ws", native, raw)`` or ``("rest", native, body)``)."""
    mapper = get_mapper(exchange)
    run = Run(exchange, mapper)

    def handle(events: list, index: int) -> None:
        for event in events:
            run.kinds[type(event).__name__] += 1
            if isinstance(event, Quarantine):
                run.quarantined.append(event)
            elif isinstance(event, BookMessage):
                sync = run.syncs.get(event.native_symbol)
                if sync is None:
                    sync = run.syncs[event.native_symbol] = BookSync(
                        exchange, event.symbol, event.native_symbol, mapper.sync_rules())
                outcome = sync.on_message(event)
                run.feed_events.extend(outcome.events)
                if outcome.needs_resync:
                    run.resync_requests[event.native_symbol] += 1
                    if on_resync is not None:
                        for kind, native, body in on_resync(event.native_symbol, index, run):
                            if kind == "rest":
                                handle(mapper.map_snapshot(native, body, event.local_ts), index)
                            else:
                                handle(mapper.map_message(body, event.local_ts), index)

    for index, rec in enumerate(records):
        for raw in (inserts or {}).get(index, []):
            handle(mapper.map_message(raw, us(rec)), index)
        if index in skip:
            continue
        if rec["dir"] == "http" and exchange == "binance" and depth_symbol(rec):
            handle(mapper.map_snapshot(depth_symbol(rec), payload(rec), us(rec)), index)
        elif rec["dir"] == "recv":
            handle(mapper.map_message(payload(rec), us(rec)), index)
    return run


def assert_books_equal(run: Run, reference: dict[str, RefBook]) -> None:
    assert set(run.syncs) == set(reference)
    for native, ref in reference.items():
        sync = run.syncs[native]
        assert sync.is_synced, native
        for side in ("bid", "ask"):
            assert list(sync.book.levels(side)) == ref.side(side), (native, side)
        assert sync.book.best_bid() == ref.side("bid")[0] and sync.book.best_ask() == ref.side("ask")[0]


def kraken_reference(records: list[dict], upto: int | None = None) -> KrakenReference:
    ref = KrakenReference()
    for index, rec in enumerate(records):
        if upto is not None and index > upto:
            break
        if rec["dir"] == "recv" and (frame := kraken_book_frame(rec["data"])) is not None:
            ref.feed(frame)
    return ref


def okx_reference(records: list[dict], upto: int | None = None) -> OkxReference:
    ref = OkxReference()
    for index, rec in enumerate(records):
        if upto is not None and index > upto:
            break
        if rec["dir"] == "recv" and (msg := okx_book_frame(rec["data"])) is not None:
            ref.feed(msg)
    return ref


# ---------------------------------------------------------------------------
# Whole sessions
# ---------------------------------------------------------------------------


def test_binance_session_aligns_every_symbol_and_matches_the_reference():
    records = load("binance")
    run = run_session("binance", records)
    assert run.quarantined == []
    assert len(run.syncs) == 4 and all(s.is_synced for s in run.syncs.values())
    assert run.total("gaps") == 0 and run.total("resyncs") == 0 and not run.resync_requests
    diffs = sum(1 for r in records if r["dir"] == "recv" and '"depthUpdate"' in r["data"])
    # Every diff is either applied on top of its symbol's snapshot or older than it.
    assert run.total("applied_messages") - run.total("snapshots") + run.total("dropped_stale") == diffs
    assert run.total("snapshots") == 4 and run.total("applied_messages") - 4 == 172  # README: 172 diffs applied
    assert [e.kind for e in run.feed_events] == [FeedEventKind.SYNCED] * 4
    assert run.kinds["TradeEvent"] == 2
    assert_books_equal(run, binance_reference(records))


def test_binance_books_equal_the_book_ticker_at_the_same_update_id():
    """bookTicker frames name the update id they describe: an independent check
    of the best levels (whichever of the two frames arrives first)."""
    records = load("binance")
    mapper = get_mapper("binance")
    syncs: dict[str, BookSync] = {}
    book_best: dict[tuple[str, int], tuple] = {}
    tickers: dict[tuple[str, int], tuple] = {}
    for rec in records:
        if rec["dir"] == "http" and depth_symbol(rec):
            events = mapper.map_snapshot(depth_symbol(rec), rec["data"], us(rec))
        elif rec["dir"] == "recv":
            events = mapper.map_message(rec["data"], us(rec))
            data = json.loads(rec["data"])["data"]
            if "e" not in data:
                tickers[(data["s"], data["u"])] = ((data["b"], data["B"]), (data["a"], data["A"]))
        else:
            continue
        for event in events:
            if isinstance(event, BookMessage):
                sync = syncs.setdefault(event.native_symbol, BookSync(
                    "binance", event.symbol, event.native_symbol, mapper.sync_rules()))
                if sync.on_message(event).applied:
                    book_best[(event.native_symbol, sync.last_seq)] = (sync.book.best_bid(), sync.book.best_ask())
    shared = sorted(set(tickers) & set(book_best))
    assert len(shared) == 26  # the README documents 26 tickers sharing an update id with the rebuilt book
    for key in shared:
        assert book_best[key] == tickers[key], key


@pytest.mark.parametrize("exchange,expected_checksums,symbols", [("kraken", 4269, 10), ("okx", 290, 3)])
def test_checksummed_sessions_pass_every_checksum_and_match_the_reference(exchange, expected_checksums, symbols):
    records = load(exchange)
    run = run_session(exchange, records)
    assert run.quarantined == []
    assert run.total("checksum_ok") == expected_checksums
    assert run.total("checksum_failed") == 0 and run.total("gaps") == 0 and not run.resync_requests
    assert len(run.syncs) == symbols
    assert Counter(e.kind for e in run.feed_events) == {FeedEventKind.SYNCED: symbols}
    assert run.kinds["TradeEvent"] == (10 if exchange == "kraken" else 74)
    reference = kraken_reference(records) if exchange == "kraken" else okx_reference(records)
    assert_books_equal(run, reference.books)


# ---------------------------------------------------------------------------
# One dropped frame: detected, only that symbol resyncs, the others are untouched
# ---------------------------------------------------------------------------


def test_binance_dropped_diff_is_a_gap_for_that_symbol_only_and_a_new_snapshot_resyncs_it():
    records = load("binance")
    victim = "NKNUSDT"
    diffs = [(i, json.loads(r["data"])["data"]) for i, r in enumerate(records)
             if r["dir"] == "recv" and f'"depthUpdate","E":' in r["data"] and f'"s":"{victim}"' in r["data"]]
    snapshot_id = next(json.loads(r["data"])["lastUpdateId"] for r in records
                       if r["dir"] == "http" and depth_symbol(r) == victim)
    applied = [(i, d) for i, d in diffs if d["u"] > snapshot_id]
    dropped_index, dropped = applied[5]

    def fresh_snapshot(native: str, index: int, run: Run):
        assert native == victim
        # A REST snapshot taken right after the dropped diff, built by the reference.
        book = binance_reference(records, upto=dropped["u"])[victim]
        body = json.dumps({"lastUpdateId": dropped["u"], "bids": [list(x) for x in book.side("bid")],
                           "asks": [list(x) for x in book.side("ask")]})
        return [("rest", victim, body)]

    run = run_session("binance", records, skip=frozenset({dropped_index}), on_resync=fresh_snapshot)
    assert run.resync_requests == {victim: 1}
    assert run.syncs[victim].gaps == 1 and run.syncs[victim].resyncs == 1
    gap = [e for e in run.feed_events if e.kind is FeedEventKind.GAP]
    assert len(gap) == 1 and gap[0].symbol == "NKN-USDT" and f"last seq {applied[4][1]['u']}" in gap[0].detail
    assert all(s.gaps == 0 and s.resyncs == 0 for n, s in run.syncs.items() if n != victim)
    assert run.quarantined == []
    # After the fresh snapshot every book, the victim's included, equals the reference.
    assert_books_equal(run, binance_reference(records))


def _drop_candidate(records: list[dict], target: str, reference_cls, parse, levels_of, top: int, after: int) -> int:
    """Index of the first update of ``target`` (after the ``after``-th) that
    touches its reference book's top ``top`` levels, so that losing it must
    change the exchange's next checksum."""
    ref = reference_cls()
    seen = 0
    for index, rec in enumerate(records):
        if rec["dir"] != "recv" or (msg := parse(rec["data"])) is None:
            continue
        name, is_update, bids, asks = levels_of(msg)
        if name == target and is_update:
            seen += 1
            book = ref.books[target]
            worst_bid = Decimal(book.side("bid")[top - 1][0])
            worst_ask = Decimal(book.side("ask")[top - 1][0])
            if seen > after and (any(Decimal(b[0]) >= worst_bid for b in bids)
                                 or any(Decimal(a[0]) <= worst_ask for a in asks)):
                return index
        ref.feed(msg)
    raise AssertionError("no candidate frame to drop")


def _kraken_levels(frame: list):
    bids = [lvl for part in frame[1:-2] for lvl in part.get("b", [])]
    asks = [lvl for part in frame[1:-2] for lvl in part.get("a", [])]
    return frame[-1], not any("as" in p or "bs" in p for p in frame[1:-2]), bids, asks


def _okx_levels(msg: dict):
    entry = msg["data"][0]
    return msg["arg"]["instId"], msg["action"] == "update", entry["bids"], entry["asks"]


def test_kraken_dropped_update_fails_the_checksum_of_that_pair_only_and_resubscribing_recovers():
    records = load("kraken")
    victim = "XMR/USD"
    dropped = _drop_candidate(records, victim, KrakenReference, kraken_book_frame, _kraken_levels, 10, after=50)

    def resubscribe(native: str, index: int, run: Run):
        assert native == victim
        # What Kraken sends after unsubscribe/subscribe: a new in-band snapshot.
        book = kraken_reference(records, upto=index).books[victim]
        stamp = f"{records[index]['t']:.6f}"
        snap = [1, {"as": [[p, s, stamp] for p, s in book.side("ask")],
                    "bs": [[p, s, stamp] for p, s in book.side("bid")]}, f"book-{KRAKEN_DEPTH}", victim]
        return [("ws", victim, json.dumps(snap))]

    clean = run_session("kraken", records)
    run = run_session("kraken", records, skip=frozenset({dropped}), on_resync=resubscribe)
    assert run.resync_requests == {victim: 1}
    assert run.syncs[victim].checksum_failed == 1 and run.total("checksum_failed") == 1
    failed = [e for e in run.feed_events if e.kind is FeedEventKind.CHECKSUM_FAILED]
    assert [e.symbol for e in failed] == ["XMR-USD"]
    for native, sync in run.syncs.items():
        if native != victim:  # untouched: every checksum of the other pairs still passes
            assert sync.checksum_ok == clean.syncs[native].checksum_ok and sync.resyncs == 0
    # After the new snapshot every later checksum of the victim passes too.
    assert run.syncs[victim].checksum_ok == clean.syncs[victim].checksum_ok - 2  # the dropped and the failed one
    assert_books_equal(run, kraken_reference(records).books)


def test_okx_dropped_update_fails_the_checksum_of_that_instrument_only_and_resubscribing_recovers():
    records = load("okx")
    victim = "BTC-USDT"
    dropped = _drop_candidate(records, victim, OkxReference, okx_book_frame, _okx_levels, 25, after=20)

    def resubscribe(native: str, index: int, run: Run):
        book = okx_reference(records, upto=index).books[native]
        snap = {"arg": {"channel": "books", "instId": native}, "action": "snapshot",
                "data": [{"asks": [[p, s, "0", "1"] for p, s in book.side("ask")],
                          "bids": [[p, s, "0", "1"] for p, s in book.side("bid")],
                          "ts": str(int(records[index]["t"] * 1000)), "checksum": 0}]}
        return [("ws", native, json.dumps(snap))]

    clean = run_session("okx", records)
    run = run_session("okx", records, skip=frozenset({dropped}), on_resync=resubscribe)
    assert run.resync_requests == {victim: 1}
    assert run.total("checksum_failed") == 1 and run.syncs[victim].checksum_failed == 1
    for native, sync in run.syncs.items():
        if native != victim:
            assert sync.checksum_ok == clean.syncs[native].checksum_ok and sync.resyncs == 0
    assert run.syncs[victim].checksum_ok == clean.syncs[victim].checksum_ok - 2
    assert_books_equal(run, okx_reference(records).books)


# ---------------------------------------------------------------------------
# Corrupted frames in a real stream: quarantined with a reason, nothing else changes
# ---------------------------------------------------------------------------


def _corruptions(exchange: str, raw: str) -> list[tuple[str, str]]:
    """(expected code, corrupted frame) variants of one real book frame."""
    msg = json.loads(raw)

    def first_level(m):
        if exchange == "binance":
            data = m["data"]
            return (data["b"] or data["a"])[0]
        if exchange == "kraken":
            part = m[1]
            return next(iter(v for k, v in part.items() if k in ("a", "b", "as", "bs") and v))[0]
        entry = m["data"][0]
        return (entry["bids"] or entry["asks"])[0]

    def variant(change):
        m = json.loads(raw)
        change(m)
        return json.dumps(m)

    def rename(m):
        if exchange == "binance":
            m["data"]["s"] = "?!"
        elif exchange == "kraken":
            m[-1] = "NOPAIR"
        else:
            m["arg"]["instId"] = "not an id"

    first_level(msg)  # the frame has a level to corrupt
    return [
        ("MAP-002", raw[: len(raw) // 2]),
        ("MAP-003", variant(lambda m: first_level(m).__setitem__(0, "NaN"))),
        ("MAP-003", variant(lambda m: first_level(m).__setitem__(1, "-" + first_level(m)[1]))),
        ("MAP-002", variant(lambda m: first_level(m).__setitem__(0, float(first_level(m)[0])))),
        ("MAP-004", variant(rename)),
    ]


@pytest.mark.parametrize("exchange", ["binance", "kraken", "okx"])
def test_corrupted_copies_of_real_frames_are_quarantined_and_mapping_continues(exchange):
    records = load(exchange)
    is_book = {
        "binance": lambda r: '"depthUpdate"' in r["data"],
        "kraken": lambda r: kraken_book_frame(r["data"]) is not None and '"c"' in r["data"],
        "okx": lambda r: okx_book_frame(r["data"]) is not None,
    }[exchange]
    book_indexes = [i for i, r in enumerate(records) if r["dir"] == "recv" and is_book(r)]
    inserts: dict[int, list[str]] = {}
    expected_codes: list[str] = []
    for index in book_indexes[:: max(1, len(book_indexes) // 7)][:7]:
        for code, corrupted in _corruptions(exchange, records[index]["data"]):
            inserts.setdefault(index, []).append(corrupted)
            expected_codes.append(code)

    clean = run_session(exchange, records)
    run = run_session(exchange, records, inserts=inserts)
    assert [q.code for q in run.quarantined] == expected_codes
    assert all(q.reason and q.raw and q.exchange == exchange for q in run.quarantined)
    # The real frames around the corrupted copies are mapped exactly as before.
    for counter in ("applied_messages", "checksum_ok", "checksum_failed", "gaps", "dropped_stale"):
        assert run.total(counter) == clean.total(counter), counter
    for native, sync in run.syncs.items():
        assert list(sync.book.levels("bid")) == list(clean.syncs[native].book.levels("bid"))
