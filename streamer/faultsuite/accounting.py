"""Exact tick accounting: what the exchange sent against what PostgreSQL holds.

A *tick* is one trade or one book level change an exchange sent. The suite
installs a :class:`WireTap` on each local exchange server; it sees every
frame actually written to a streamer connection (after any injected fault)
and records the ticks in it, with the wall-clock time they were sent, in a
:class:`TickLedger`. :func:`account` then compares the ledger with the rows
in PostgreSQL:

- a trade is identified by ``(exchange, symbol, trade_id)``;
- a book level change by ``(exchange, symbol, seq, side, price)``, ``seq``
  being the frame's sequence id (Binance ``u``, OKX ``seqId``). Snapshot
  levels (OKX in-band snapshots, Binance REST snapshots) are state, not
  changes, and are not ticks.

A sent tick that is not stored is *accounted for* when the streamer recorded
why it could not be stored:

- a book level change sent while its book was not synchronised: after a
  ``gap``, ``checksum_failed``, ``resync``, ``crossed`` event of that symbol
  or a ``connected``/``disconnected``/``stall`` of its connection, and before
  the symbol's next ``synced`` event (the book's next snapshot holds it);
- any tick sent just before a ``disconnected``/``stall`` event and until the
  next ``connected`` (in flight when the connection went away);
- a book level change whose seq is not above the seq of the first snapshot
  received after it was sent: the sync rules drop it as stale, and the stored
  snapshot already holds its effect (a Binance delta still in flight when the
  REST snapshot that includes it arrived).

Detection lags sending by the transit time, so windows open ``slack``
seconds before the event that opened them. Ticks sent while the streamer
process was dead (between a kill and its restarted process's next
connection) are counted apart as ``sent_while_dead``. Everything else not
stored is ``lost``; stored rows beyond one per tick are ``duplicated``.

Only exchanges whose book frames carry a sequence id are supported (Binance,
OKX): Kraken v1 book frames have none, so its level changes have no exact key.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson
import psycopg
from psycopg import sql

from ..connection.clock import now_us
from ..contract import validate_identifier
from ..local.server import FaultPlan

#: Protocols whose frames the tap can turn into exactly-keyed ticks.
ACCOUNTED_PROTOCOLS = ("binance", "okx")
#: Events after which a symbol's book is not synchronised until its next ``synced``.
BOOK_BREAKS = frozenset({"gap", "checksum_failed", "resync", "crossed"})
CONNECTION_BREAKS = frozenset({"disconnected", "stall"})
#: Events that mark an interval without data (what the quality assets count as gaps).
GAP_EVENTS = frozenset({"gap", "checksum_failed", "crossed", "disconnected", "stall"})
DEFAULT_SLACK_S = 1.0


@dataclass
class TickLedger:
    """Ticks sent to the streamer: key -> ``[first_sent_us, last_sent_us]`` (bounded).

    A tick sent on two connections (the old one dying, the new one starting)
    is still one tick.
    """

    max_ticks: int = 2_000_000
    trades: dict[tuple, list[int]] = field(default_factory=dict)
    levels: dict[tuple, list[int]] = field(default_factory=dict)
    frames_sent: int = 0
    snapshot_frames: int = 0
    injected_frames: int = 0
    #: Frames the tap could not read as a known message kind (acks, heartbeats, errors).
    other_frames: int = 0
    overflowed: bool = False

    def __len__(self) -> int:
        return len(self.trades) + len(self.levels)

    def _add(self, table: dict, key: tuple, ts: int) -> None:
        seen = table.get(key)
        if seen is not None:
            seen[1] = ts
        elif len(self) < self.max_ticks:
            table[key] = [ts, ts]
        else:
            self.overflowed = True

    def add_trade(self, exchange: str, symbol: str, trade_id: str, ts: int) -> None:
        self._add(self.trades, (exchange, symbol, trade_id), ts)

    def add_level(self, exchange: str, symbol: str, seq: int, side: str, price: float, ts: int) -> None:
        self._add(self.levels, (exchange, symbol, seq, side, price), ts)


# ---------------------------------------------------------------------------
# Reading the frames the exchanges sent (independently of the streamer's mappers)
# ---------------------------------------------------------------------------


def _binance(ledger: TickLedger, frame: dict, natives: Mapping[str, str], ts: int) -> bool:
    data = frame.get("data", frame)
    if not isinstance(data, dict):
        return False
    kind = data.get("e")
    symbol = natives.get(data.get("s"))
    if symbol is None:
        return False
    if kind == "depthUpdate":
        seq = data["u"]
        for side, key in (("bid", "b"), ("ask", "a")):
            for price, _size in data[key]:
                ledger.add_level("binance", symbol, seq, side, float(price), ts)
        return True
    if kind in ("trade", "aggTrade"):
        ledger.add_trade("binance", symbol, str(data["t"] if kind == "trade" else data["a"]), ts)
        return True
    return False


def _okx(ledger: TickLedger, frame: dict, natives: Mapping[str, str], ts: int) -> bool:
    arg = frame.get("arg")
    if not isinstance(arg, dict) or "data" not in frame:
        return False
    symbol = natives.get(arg.get("instId"))
    if symbol is None:
        return False
    channel = arg.get("channel")
    if channel == "books":
        if frame.get("action") == "snapshot":
            ledger.snapshot_frames += 1
            return True
        for item in frame["data"]:
            seq = item["seqId"]
            for side, key in (("bid", "bids"), ("ask", "asks")):
                for level in item[key]:
                    ledger.add_level("okx", symbol, seq, side, float(level[0]), ts)
        return True
    if channel == "trades":
        for item in frame["data"]:
            ledger.add_trade("okx", symbol, str(item["tradeId"]), ts)
        return True
    return False


_READERS = {"binance": _binance, "okx": _okx}


def native_names(protocol: str, symbols: Sequence[str]) -> dict[str, str]:
    """``{native: normalized}`` for the simulator's spelling of ``symbols`` (``BTC-USDT``)."""
    if protocol == "binance":
        return {s.replace("-", ""): s for s in symbols}
    if protocol == "okx":
        return {s: s for s in symbols}
    raise ValueError(f"tick accounting supports {', '.join(ACCOUNTED_PROTOCOLS)}, not {protocol!r}")


class WireTap(FaultPlan):
    """Records the ticks of every frame written to a client, after ``inner``'s faults.

    Frames ``inner`` injected (``inner.is_injected(frame)``: garbage that is
    not exchange data) are counted apart, never as ticks. With ``recording``
    off (the run is winding down) the exchange goes silent: nothing more is
    sent, so every stored row must match a recorded tick.
    """

    def __init__(self, protocol: str, symbols: Sequence[str], ledger: TickLedger,
                 inner: FaultPlan | None = None) -> None:
        self.protocol = protocol
        self.natives = native_names(protocol, symbols)
        self.ledger = ledger
        self.inner = inner
        self.recording = True
        self._read = _READERS[protocol]

    async def ws_frames(self, session, data):
        if not self.recording:
            return ()
        frames = (data,) if self.inner is None else await self.inner.ws_frames(session, data)
        ledger = self.ledger
        is_injected = getattr(self.inner, "is_injected", None)
        ts = now_us()
        for frame in frames:
            if is_injected is not None and is_injected(frame):
                ledger.injected_frames += 1
                continue
            ledger.frames_sent += 1
            try:
                parsed = orjson.loads(frame)
                known = isinstance(parsed, dict) and self._read(ledger, parsed, self.natives, ts)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
                known = False  # a fault plan's corruption: not exchange data the tap can key
            if not known:
                ledger.other_frames += 1
        return frames

    async def rest_response(self, path, query):
        return None if self.inner is None else await self.inner.rest_response(path, query)


# ---------------------------------------------------------------------------
# Comparing with PostgreSQL
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadInterval:
    """The streamer process was dead from ``killed_us`` until it was restarted at ``restarted_us``."""

    killed_us: int
    restarted_us: int


class _Windows:
    """Merged ``[start, end]`` intervals with a fast membership test."""

    def __init__(self, intervals: list[tuple[float, float]]) -> None:
        merged: list[list[float]] = []
        for start, end in sorted(intervals):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.starts = [m[0] for m in merged]
        self.ends = [m[1] for m in merged]

    def covers(self, ts: float) -> bool:
        i = bisect.bisect_right(self.starts, ts) - 1
        return i >= 0 and ts <= self.ends[i]


def _epoch_us(value) -> int:
    return int(value.timestamp() * 1_000_000)


def _next_after(times: list[int], ts: float) -> float:
    i = bisect.bisect_left(times, ts)
    return times[i] if i < len(times) else math.inf


def _fetch(conn: psycopg.Connection, schema: str, query: str, params: tuple = ()) -> list[tuple]:
    return conn.execute(sql.SQL(query).format(schema=sql.Identifier(schema)), params).fetchall()


def account(ledger: TickLedger, pg_url: str, schema: str, *, dead: Sequence[DeadInterval] = (),
            slack_s: float = DEFAULT_SLACK_S) -> dict:
    """Compare ``ledger`` with the rows in ``schema`` and return the numbers (see the module doc)."""
    validate_identifier(schema)
    slack = slack_s * 1_000_000
    with psycopg.connect(pg_url, autocommit=True) as conn:
        stored_trades = {(e, s, t): n for e, s, t, n in _fetch(
            conn, schema, "SELECT exchange, symbol, trade_id, count(*) FROM {schema}.trades GROUP BY 1, 2, 3")}
        stored_levels = {(e, s, q, side, p): n for e, s, q, side, p, n in _fetch(
            conn, schema, "SELECT exchange, symbol, seq, side, price, count(*) FROM {schema}.book_updates "
                          "WHERE NOT is_snapshot GROUP BY 1, 2, 3, 4, 5")}
        events = _fetch(conn, schema, "SELECT exchange, symbol, event, local_ts FROM {schema}.feed_events "
                                      "ORDER BY local_ts")
        quarantined = _fetch(conn, schema, "SELECT count(*) FROM {schema}.quarantine")[0][0]
        snapshot_rows = _fetch(conn, schema, "SELECT count(*) FROM {schema}.book_updates WHERE is_snapshot")[0][0]
        snapshots = _fetch(conn, schema, "SELECT DISTINCT exchange, symbol, local_ts, seq FROM {schema}.book_updates "
                                         "WHERE is_snapshot AND seq IS NOT NULL ORDER BY 3")

    # Windows in which an unstored tick is accounted for.
    connected: dict[str, list[int]] = {}
    synced: dict[tuple[str, str], list[int]] = {}
    book_starts: dict[tuple[str, str] | str, list[int]] = {}
    drop_starts: dict[str, list[int]] = {}
    event_counts: dict[str, int] = {}
    for exchange, symbol, event, local_ts in events:
        ts = _epoch_us(local_ts)
        event_counts[event] = event_counts.get(event, 0) + 1
        if event == "connected":
            connected.setdefault(exchange, []).append(ts)
            book_starts.setdefault(exchange, []).append(ts)
        elif event == "synced":
            synced.setdefault((exchange, symbol), []).append(ts)
        elif event in CONNECTION_BREAKS:
            drop_starts.setdefault(exchange, []).append(ts)
            book_starts.setdefault(exchange, []).append(ts)
        elif event in BOOK_BREAKS:
            book_starts.setdefault((exchange, symbol), []).append(ts)

    dead_windows: dict[str, _Windows] = {}
    dead_report = []
    exchanges = {key[0] for key in (*ledger.trades, *ledger.levels)}
    for exchange in exchanges:
        spans = []
        for interval in dead:
            back = _next_after(connected.get(exchange, []), interval.restarted_us)
            spans.append((interval.killed_us, back))
        dead_windows[exchange] = _Windows(spans)
    for interval in dead:
        dead_report.append({
            "killed_us": interval.killed_us,
            "restarted_us": interval.restarted_us,
            # The rows that close the dead interval: each exchange's first connect after the restart.
            "reconnected": sorted(e for e in exchanges
                                  if _next_after(connected.get(e, []), interval.restarted_us) < math.inf),
        })

    trade_windows = {
        exchange: _Windows([(start - slack, _next_after(connected.get(exchange, []), start))
                            for start in starts])
        for exchange, starts in drop_starts.items()
    }
    book_windows: dict[tuple[str, str], _Windows] = {}

    def book_window(exchange: str, symbol: str) -> _Windows:
        window = book_windows.get((exchange, symbol))
        if window is None:
            times = synced.get((exchange, symbol), [])
            starts = [*book_starts.get((exchange, symbol), []), *book_starts.get(exchange, [])]
            window = _Windows([(start - slack, _next_after(times, start)) for start in starts])
            book_windows[(exchange, symbol)] = window
        return window

    # A level change the exchange sent just before a snapshot that already
    # includes it (its seq is not above the snapshot's) is dropped as stale by
    # the sync rules: the stored snapshot carries its effect.
    snapshot_times: dict[tuple[str, str], list[int]] = {}
    snapshot_seqs: dict[tuple[str, str], list[int]] = {}
    for exchange, symbol, local_ts, seq in snapshots:
        snapshot_times.setdefault((exchange, symbol), []).append(_epoch_us(local_ts))
        snapshot_seqs.setdefault((exchange, symbol), []).append(seq)

    def superseded_by_snapshot(exchange: str, symbol: str, seq: int | None, sent_us: int) -> bool:
        times = snapshot_times.get((exchange, symbol))
        if seq is None or not times:
            return False
        index = bisect.bisect_left(times, sent_us - slack)  # the first snapshot received after it was sent
        return index < len(times) and snapshot_seqs[(exchange, symbol)][index] >= seq

    totals = {"ticks_sent": 0, "ticks_stored": 0, "accounted_for": 0, "sent_while_dead": 0, "lost": 0}
    lost_examples: list[str] = []
    for kind, sent, stored in (("trade", ledger.trades, stored_trades), ("level", ledger.levels, stored_levels)):
        for key, (first, last) in sent.items():
            totals["ticks_sent"] += 1
            if key in stored:
                totals["ticks_stored"] += 1
                continue
            exchange = key[0]
            dead_window = dead_windows.get(exchange)
            if dead_window is not None and (dead_window.covers(first) or dead_window.covers(last)):
                totals["sent_while_dead"] += 1
                continue
            windows = [trade_windows.get(exchange)]
            if kind == "level":
                windows.append(book_window(exchange, key[1]))
            if any(w is not None and (w.covers(first) or w.covers(last)) for w in windows):
                totals["accounted_for"] += 1
                continue
            if kind == "level" and superseded_by_snapshot(exchange, key[1], key[2], first):
                totals["accounted_for"] += 1
                continue
            totals["lost"] += 1
            if len(lost_examples) < 5:
                lost_examples.append(f"{kind} {key} sent at {first}")

    duplicated = sum(n - 1 for n in stored_trades.values() if n > 1) + \
        sum(n - 1 for n in stored_levels.values() if n > 1)
    unmatched = sum(1 for key in stored_trades if key not in ledger.trades) + \
        sum(1 for key in stored_levels if key not in ledger.levels)
    return {
        "frames_sent": ledger.frames_sent,
        **totals,
        "duplicated": duplicated,
        "quarantined": quarantined,
        "gaps_recorded": sum(n for event, n in event_counts.items() if event in GAP_EVENTS),
        "feed_events": event_counts,
        "injected_frames": ledger.injected_frames,
        "snapshot_rows": snapshot_rows,
        "unmatched_rows": unmatched,
        "ledger_overflowed": ledger.overflowed,
        "dead_intervals": dead_report,
        "lost_examples": lost_examples,
    }
