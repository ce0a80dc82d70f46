"""Data-quality scores per exchange, symbol and hour.

Columns (one row per exchange and symbol with any data or event in the hour):

- ``connected_seconds``: seconds the exchange connection was up in the hour,
  from ``connected`` / ``disconnected`` / ``stall`` feed events (the state at
  the start of the hour comes from the last such event before it). A
  connection still open at the end counts until the exchange's last stored
  row, because a stopped streamer writes nothing more. With no connection
  event at all, the whole hour counts. An exchange split over several
  connections (shards, whose events carry ``symbol = '@1'``, ``'@2'``, ...;
  ``''`` for an exchange on one connection) counts only the seconds when all
  of its connections seen in the hour or before it were up: each carries
  part of the symbols, so any one down means missing data.
- ``expected_snapshots`` = ``connected_seconds / snapshot_interval``;
  ``actual_snapshots`` = distinct snapshot timestamps; ``coverage`` =
  ``min(1, actual / expected)`` (1 when less than one snapshot was expected).
- ``gaps``, ``resyncs``, ``checksum_failed``: feed events of the symbol;
  ``disconnects``: ``disconnected`` and ``stall`` events of the exchange, all
  of its connections together.
- ``crossed_books``: snapshots whose best bid >= best ask (crossed or locked).
- ``latency_p50_ms``, ``latency_p99_ms``: ``local_ts - exchange_ts`` in
  milliseconds, one sample per received message (distinct
  ``(local_ts, exchange_ts)`` over book updates and trades, so a frame with
  fifty levels counts once), linear interpolation as numpy's default;
  ``latency_samples``: how many.

Score (0-100, higher is better)::

    score = 100 * coverage
            - 10 * gaps - 10 * checksum_failed - 5 * resyncs - 5 * disconnects
            - (25 if crossed_books > 0 else 0)
            - min(10, max(0, (latency_p99_ms - 1000) / 100))
    clipped to [0, 100], rounded to 0.01

Coverage carries the weight (a missing snapshot is missing data); every
integrity incident costs a fixed amount (a gap costs 10 and the resync it
triggers 5 more); a crossed or locked book means the book was wrong and costs
a quarter; slow delivery costs at most 10, starting at one second p99.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import reduce
from typing import Iterable

import polars as pl

from streamer.contract import CONNECTION_LABEL_PREFIX, STOPPED

from .hours import HourWindow

CONNECTION_UP = "connected"
CONNECTION_DOWN = ("disconnected", "stall")
#: A connection's state when the hour began (``connection_state_before``):
#: up, down, or stopped on purpose by the streamer.
STATE_UP, STATE_DOWN, STATE_STOPPED = "up", "down", STOPPED
COUNTED_EVENTS = {"gap": "gaps", "resync": "resyncs", "checksum_failed": "checksum_failed"}
#: Connection events name their connection in ``symbol``: '' for an exchange on
#: one connection, '@1', '@2', ... for its shards. No real symbol looks like that.
IS_CONNECTION_LABEL = (pl.col("symbol") == "") | pl.col("symbol").str.starts_with(CONNECTION_LABEL_PREFIX)

#: (start, end) of a stretch of time.
Interval = tuple[datetime, datetime]

COLUMNS = [
    "hour",
    "exchange",
    "symbol",
    "connected_seconds",
    "expected_snapshots",
    "actual_snapshots",
    "coverage",
    "gaps",
    "resyncs",
    "checksum_failed",
    "disconnects",
    "crossed_books",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_samples",
    "score",
]
SCHEMA = pl.Schema(
    {
        "hour": pl.Datetime("us", "UTC"),
        "exchange": pl.String,
        "symbol": pl.String,
        "connected_seconds": pl.Float64,
        "expected_snapshots": pl.Float64,
        "actual_snapshots": pl.Int64,
        "coverage": pl.Float64,
        "gaps": pl.Int64,
        "resyncs": pl.Int64,
        "checksum_failed": pl.Int64,
        "disconnects": pl.Int64,
        "crossed_books": pl.Int64,
        "latency_p50_ms": pl.Float64,
        "latency_p99_ms": pl.Float64,
        "latency_samples": pl.Int64,
        "score": pl.Float64,
    }
)


@dataclass(frozen=True)
class ScorePolicy:
    """The weights of the score formula (see the module docstring)."""

    gap_penalty: float = 10.0
    checksum_penalty: float = 10.0
    resync_penalty: float = 5.0
    disconnect_penalty: float = 5.0
    crossed_penalty: float = 25.0
    latency_free_ms: float = 1000.0
    latency_ms_per_point: float = 100.0
    latency_max_penalty: float = 10.0


def up_intervals(
    events: Iterable[tuple[datetime, str]],
    *,
    window: HourWindow,
    up_at_start: bool | None,
    last_row: datetime | None,
) -> list[Interval]:
    """The (start, end) intervals within ``window`` one connection was up, in time order.

    ``events`` are (time, kind) connection events inside the window;
    ``up_at_start`` is the state left by the last event before it (None: no
    history, and with no event either the whole window counts). A second
    ``connected`` while up restarts the interval there (the previous one
    ended without a recorded disconnect, so the time in between still
    counts: snapshots were expected and missed). Still up after the last
    event: up until ``last_row`` (the exchange's last stored row), at most
    the window's end.
    """
    events = sorted(events)
    if not events and up_at_start is None:
        return [(window.start, window.end)]
    up = bool(up_at_start)
    opened = window.start
    intervals = []
    for at, kind in events:
        if kind == CONNECTION_UP:
            if up:
                intervals.append((opened, at))
            up, opened = True, at
        elif kind in CONNECTION_DOWN and up:
            intervals.append((opened, at))
            up = False
    if up:
        closed = window.end if last_row is None else min(window.end, max(last_row, opened))
        intervals.append((opened, closed))
    # The pipeline passes only the window's own events; this guards other callers.
    clipped = ((max(a, window.start), min(b, window.end)) for a, b in intervals)
    return [(a, b) for a, b in clipped if a < b]


def intersect(first: list[Interval], second: list[Interval]) -> list[Interval]:
    """The time covered by both lists of ordered, non-overlapping intervals."""
    out = []
    i = j = 0
    while i < len(first) and j < len(second):
        start, end = max(first[i][0], second[j][0]), min(first[i][1], second[j][1])
        if start < end:
            out.append((start, end))
        # The interval that ends first cannot meet anything later in the other list.
        if first[i][1] <= second[j][1]:
            i += 1
        else:
            j += 1
    return out


def _seconds(intervals: Iterable[Interval], window: HourWindow) -> float:
    """Seconds covered by ``intervals`` (ordered, non-overlapping), at most the window."""
    total = sum(((b - a).total_seconds() for a, b in intervals), 0.0)
    return max(0.0, min(total, window.seconds))


def connected_seconds(
    events: Iterable[tuple[datetime, str]],
    *,
    window: HourWindow,
    up_at_start: bool | None,
    last_row: datetime | None,
) -> float:
    """Seconds one connection was up within ``window`` (see :func:`up_intervals`)."""
    return _seconds(up_intervals(events, window=window, up_at_start=up_at_start, last_row=last_row), window)


def snapshot_stats(snapshots: pl.LazyFrame) -> pl.LazyFrame:
    """Distinct snapshots and crossed/locked ones per exchange and symbol."""
    per_snapshot = snapshots.group_by("exchange", "symbol", "local_ts").agg(
        best_bid=pl.col("price").filter(pl.col("side") == "bid").max(),
        best_ask=pl.col("price").filter(pl.col("side") == "ask").min(),
    )
    return per_snapshot.group_by("exchange", "symbol").agg(
        actual_snapshots=pl.len().cast(pl.Int64),
        crossed_books=(pl.col("best_bid") >= pl.col("best_ask")).fill_null(False).sum().cast(pl.Int64),
    )


def latency_stats(updates: pl.LazyFrame, trades: pl.LazyFrame) -> pl.LazyFrame:
    """Exchange-to-local latency percentiles per exchange and symbol."""
    columns = ["exchange", "symbol", "local_ts", "exchange_ts"]
    samples = (
        pl.concat([updates.select(columns), trades.select(columns)])
        .drop_nulls("exchange_ts")
        .unique()
        .with_columns(
            latency_ms=(pl.col("local_ts") - pl.col("exchange_ts")).dt.total_microseconds().cast(pl.Float64) / 1000.0
        )
    )
    return samples.group_by("exchange", "symbol").agg(
        latency_p50_ms=pl.col("latency_ms").quantile(0.5, interpolation="linear"),
        latency_p99_ms=pl.col("latency_ms").quantile(0.99, interpolation="linear"),
        latency_samples=pl.len().cast(pl.Int64),
    )


def last_rows(*frames: pl.LazyFrame) -> dict[str, datetime]:
    """Latest ``local_ts`` per exchange over the frames."""
    latest = (
        pl.concat([f.select("exchange", "local_ts") for f in frames])
        .group_by("exchange")
        .agg(pl.col("local_ts").max())
        .collect()
    )
    return dict(latest.iter_rows())


def score_expression(policy: ScorePolicy) -> pl.Expr:
    latency_penalty = (
        ((pl.col("latency_p99_ms") - policy.latency_free_ms) / policy.latency_ms_per_point)
        .clip(0.0, policy.latency_max_penalty)
        .fill_null(0.0)
    )
    raw = (
        100.0 * pl.col("coverage")
        - policy.gap_penalty * pl.col("gaps")
        - policy.checksum_penalty * pl.col("checksum_failed")
        - policy.resync_penalty * pl.col("resyncs")
        - policy.disconnect_penalty * pl.col("disconnects")
        - pl.when(pl.col("crossed_books") > 0).then(policy.crossed_penalty).otherwise(0.0)
        - latency_penalty
    )
    return raw.clip(0.0, 100.0).round(2)


def quality_scores(
    *,
    window: HourWindow,
    snapshots: pl.LazyFrame,
    updates: pl.LazyFrame,
    trades: pl.LazyFrame,
    feed_events: pl.DataFrame,
    state_at_start: dict[tuple[str, str], str],
    snapshot_interval: float,
    policy: ScorePolicy = ScorePolicy(),
) -> pl.DataFrame:
    """The quality table of one hour.

    ``feed_events`` holds the hour's rows of the raw ``feed_events`` table;
    ``state_at_start`` the state per (exchange, connection label) left by
    earlier events (see :func:`coby_pipeline.lib.pg_extract.connection_state_before`).
    """
    if snapshot_interval <= 0:
        raise ValueError(f"snapshot interval must be positive, got {snapshot_interval}")
    symbol_events = feed_events.filter(~IS_CONNECTION_LABEL)
    pairs = (
        pl.concat(
            [
                snapshots.select("exchange", "symbol"),
                updates.select("exchange", "symbol"),
                trades.select("exchange", "symbol"),
                symbol_events.lazy().select("exchange", "symbol"),
            ]
        )
        .unique()
        .collect()
    )
    if pairs.is_empty():
        return pl.DataFrame(schema=SCHEMA)

    counts = (
        symbol_events.filter(pl.col("event").is_in(list(COUNTED_EVENTS)))
        .group_by("exchange", "symbol")
        .agg(**{name: (pl.col("event") == event).sum().cast(pl.Int64) for event, name in COUNTED_EVENTS.items()})
    )
    # Every connection of the exchange: a shard's disconnect loses its symbols' data too.
    disconnects = (
        feed_events.filter(pl.col("event").is_in(list(CONNECTION_DOWN)))
        .group_by("exchange")
        .agg(disconnects=pl.len().cast(pl.Int64))
    )
    connection = _connection_table(feed_events, pairs, window, state_at_start,
                                   last_rows(snapshots, updates, trades))

    table = (
        pairs.lazy()
        .join(snapshot_stats(snapshots), on=["exchange", "symbol"], how="left")
        .join(latency_stats(updates, trades), on=["exchange", "symbol"], how="left")
        .join(counts.lazy(), on=["exchange", "symbol"], how="left")
        .join(disconnects.lazy(), on="exchange", how="left")
        .join(connection.lazy(), on="exchange", how="left")
        .with_columns(
            pl.col("actual_snapshots", "crossed_books", "gaps", "resyncs", "checksum_failed", "disconnects")
            .fill_null(0)
            .cast(pl.Int64),
            pl.col("latency_samples").fill_null(0).cast(pl.Int64),
            expected_snapshots=pl.col("connected_seconds") / snapshot_interval,
            hour=pl.lit(window.start).cast(pl.Datetime("us", "UTC")),
        )
        .with_columns(
            coverage=pl.when(pl.col("expected_snapshots") < 1.0)
            .then(1.0)
            .otherwise((pl.col("actual_snapshots") / pl.col("expected_snapshots")).clip(upper_bound=1.0))
        )
        .with_columns(score=score_expression(policy))
        .select(COLUMNS)
        .sort("exchange", "symbol")
    )
    return table.collect().cast(dict(SCHEMA))


def _up(state: str | None) -> bool | None:
    """``state_at_start`` as :func:`up_intervals` takes it (None: no history)."""
    return None if state is None else state == STATE_UP


def _connection_table(
    feed_events: pl.DataFrame,
    pairs: pl.DataFrame,
    window: HourWindow,
    state_at_start: dict[tuple[str, str], str],
    last_row: dict[str, datetime],
) -> pl.DataFrame:
    """``connected_seconds`` per exchange: the time all of its connections were up.

    A connection the streamer stopped on purpose before the hour, with no
    event in it, was retired (the exchange was split differently since): it
    does not count while another connection of the exchange does.
    """
    connection_kinds = [CONNECTION_UP, *CONNECTION_DOWN]
    events = feed_events.filter(pl.col("event").is_in(connection_kinds))
    exchanges = sorted(set(pairs["exchange"].to_list()))
    seconds = []
    for exchange in exchanges:
        # The connections known to this exchange, each with its events in the hour;
        # none known at all is one connection without history.
        by_label: dict[str, list[tuple[datetime, str]]] = {
            label: [] for known, label in state_at_start if known == exchange
        }
        mine = events.filter(pl.col("exchange") == exchange)
        for at, label, kind in mine.select("local_ts", "symbol", "event").iter_rows():
            by_label.setdefault(label, []).append((at, kind))
        active = {label: label_events for label, label_events in by_label.items()
                  if label_events or state_at_start.get((exchange, label)) != STATE_STOPPED}
        per_connection = [
            up_intervals(
                label_events,
                window=window,
                up_at_start=_up(state_at_start.get((exchange, label))),
                last_row=last_row.get(exchange),
            )
            for label, label_events in (active or by_label or {"": []}).items()
        ]
        seconds.append(_seconds(reduce(intersect, per_connection), window))
    return pl.DataFrame(
        {"exchange": exchanges, "connected_seconds": seconds},
        schema={"exchange": pl.String, "connected_seconds": pl.Float64},
    )
