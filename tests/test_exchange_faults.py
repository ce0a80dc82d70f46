"""The streamer under exchange faults, end to end on loopback.

Simulated exchanges (and one recorded session) are served by the local
exchange server with fault plans from :mod:`streamer.local.faults`; the real
streamer writes to real PostgreSQL and Redis. Tests wait for conditions (the
fault happened, every book is synced again), never for wall-clock durations.
"""

from __future__ import annotations

import asyncio
from argparse import Namespace

import orjson
import psycopg
import pytest
from psycopg import sql

from streamer import commands
from streamer.app import Streamer
from streamer.connection.ws import WsOptions
from streamer.feed import FeedConfig
from streamer.local.faults import parse_fault_spec
from streamer.local.server import FaultPlan
from streamer.simulator.backend import run_simulated_exchanges

SYMBOLS = {
    "binance": ["BTC-USDT", "ETH-USDT", "SOL-USDT"],
    "kraken": ["BTC-USD", "ETH-USD", "SOL-USD"],
    "okx": ["BTC-USDT", "ETH-USDT", "SOL-USDT"],
}
ETH = {"binance": "ETH-USDT", "kraken": "ETH-USD", "okx": "ETH-USDT"}
#: Generous bound for a condition to come true; tests normally finish far sooner.
WAIT = 25.0


def _rows(settings, query: str, *params) -> list[tuple]:
    statement = sql.SQL(query).format(schema=sql.Identifier(settings.db.schema))
    with psycopg.connect(settings.db.url(), autocommit=True) as conn:
        return conn.execute(statement, params).fetchall()


def feed_events(settings, exchange: str) -> list[tuple[str, str, str]]:
    return _rows(settings, "SELECT symbol, event, detail FROM {schema}.feed_events "
                           "WHERE exchange = %s ORDER BY local_ts", exchange)


def quarantine(settings, exchange: str) -> list[tuple[str, str, str]]:
    return _rows(settings, "SELECT code, reason, raw FROM {schema}.quarantine WHERE exchange = %s", exchange)


def all_synced(streamer: Streamer) -> bool:
    """Every configured book exists and is synced (False before the feed has created its books)."""
    return all(
        len(feed.books) == len(feed.config.symbols) and all(sync.is_synced for sync in feed.books.values())
        for feed in streamer.feeds
    )


async def run_until(settings, feed: FeedConfig, done, *, settle=None) -> tuple[Streamer, dict]:
    """Run the streamer until ``done(streamer)`` holds (bounded by WAIT), then stop it.

    ``settle`` (optional) must also hold before stopping, e.g. "every book synced".
    """
    streamer = Streamer(settings, [feed])
    await streamer.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    try:
        while not (done(streamer) and (settle is None or settle(streamer))):
            failure = streamer.failed_task()
            if failure is not None:
                raise failure
            if loop.time() > deadline:
                pytest.fail(f"condition not reached within {WAIT}s: {streamer.summary()}")
            await asyncio.sleep(0.05)
    finally:
        await streamer.stop()
    return streamer, streamer.summary()[feed.exchange]


def sim_feed(protocol: str, urls, **ws) -> FeedConfig:
    options = WsOptions(backoff_base=0.2, backoff_cap=1.0, **ws)
    return FeedConfig(protocol, SYMBOLS[protocol], urls[protocol], ws=options)


# -- disconnects ------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["binance", "kraken", "okx"])
async def test_disconnect_storm_reconnects_resubscribes_and_resyncs_every_book(protocol, settings):
    plan = parse_fault_spec("disconnect:after=120,times=5")
    async with run_simulated_exchanges([protocol], {protocol: SYMBOLS[protocol]}, rate=60) as urls:
        urls.servers[protocol].faults = plan
        streamer, summary = await run_until(
            settings, sim_feed(protocol, urls),
            done=lambda s: plan.plans[0].applied == 5 and s.feeds[0].stats.reconnects == 5,
            settle=all_synced,
        )
        connections = urls.servers[protocol].ws_connections

    assert summary["reconnects"] == 5 and connections == 6
    assert set(summary["books"]) == set(SYMBOLS[protocol])
    assert summary["rejected"] == 0
    events = feed_events(settings, protocol)
    kinds = [event for _symbol, event, _detail in events]
    # One disconnect per drop (plus the final stop), each followed by a new connection.
    assert kinds.count("connected") == 6
    assert kinds.count("disconnected") == 6
    drops = [i for i, k in enumerate(kinds) if k == "disconnected"][:5]
    for i in drops:
        assert "connected" in kinds[i + 1:], "a drop without a reconnect after it"
    # Every book resynced after every reconnect: each symbol synced 6 times, and
    # never published from before the drop (a resync per reconnect is recorded).
    synced = [symbol for symbol, event, _ in events if event == "synced"]
    resyncs = [symbol for symbol, event, _ in events if event == "resync"]
    for symbol in SYMBOLS[protocol]:
        assert synced.count(symbol) == 6, (symbol, synced)
        assert resyncs.count(symbol) == 5
    # The gap of each drop is derivable: a disconnected event, then connected, then synced.
    assert not [e for e in events if e[1] in ("gap", "checksum_failed")]


# -- stalls -----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["binance", "okx"])
async def test_stall_is_detected_after_the_stall_timeout_and_the_feed_recovers(protocol, settings):
    plan = parse_fault_spec("stall:after=150,seconds=30")
    async with run_simulated_exchanges([protocol], {protocol: SYMBOLS[protocol]}, rate=60) as urls:
        urls.servers[protocol].faults = plan
        streamer, summary = await run_until(
            settings, sim_feed(protocol, urls, stall_timeout=1.0),
            done=lambda s: s.feeds[0].stats.reconnects >= 1 and s.feeds[0].stats.frames > 400,
            settle=all_synced,
        )
        stall_plan = plan.plans[0]

    assert stall_plan.applied == 1
    assert not stall_plan.stalling  # the server-side stall ended when the client left
    events = feed_events(settings, protocol)
    stalls = [detail for _s, event, detail in events if event == "stall"]
    assert len(stalls) == 1
    assert stalls[0].startswith("stall: no frame for 1s; last frame local_ts=")
    kinds = [event for _s, event, _d in events]
    after = kinds[kinds.index("stall"):]
    assert "connected" in after and "synced" in after
    assert set(summary["books"]) == set(SYMBOLS[protocol]) and summary["rejected"] == 0


def test_stall_timeout_and_frame_limit_come_from_the_environment():
    from streamer.config import load_settings
    from streamer.errors import ConfigError

    settings = load_settings({"COBY_STALL_TIMEOUT": "7.5", "COBY_MAX_FRAME_BYTES": "65536"})
    options = commands.ws_options(settings)
    assert (options.stall_timeout, options.max_frame_bytes) == (7.5, 65536)
    assert options.transport_max_bytes >= options.max_frame_bytes
    with pytest.raises(ConfigError, match="COBY_STALL_TIMEOUT"):
        load_settings({"COBY_STALL_TIMEOUT": "soon"})
    with pytest.raises(ConfigError, match="COBY_MAX_FRAME_BYTES"):
        load_settings({"COBY_MAX_FRAME_BYTES": "12"})


# -- REST rate limits and bans ----------------------------------------------------


async def test_binance_snapshot_rate_limited_then_served_honours_retry_after(settings):
    plan = parse_fault_spec("rest:status=429,count=2,retry_after=1,match=/api/v3/depth")
    async with run_simulated_exchanges(["binance"], {"binance": SYMBOLS["binance"]}, rate=40) as urls:
        urls.servers["binance"].faults = plan
        streamer, summary = await run_until(settings, sim_feed("binance", urls), done=all_synced)
    rest = streamer.feeds[0].rest
    assert plan.plans[0].applied == 2 and rest.rate_limited == 2
    limited = [w for w in rest.waits if w.status == 429]
    assert len(limited) == 2 and all(w.seconds >= w.retry_after == 1 for w in limited)
    assert set(summary["books"]) == set(SYMBOLS["binance"])
    assert summary["rejected"] == 0


async def test_binance_ban_makes_the_feed_wait_instead_of_hammering(settings):
    plan = parse_fault_spec("rest:status=418,count=1,retry_after=2,match=/api/v3/depth")
    async with run_simulated_exchanges(["binance"], {"binance": SYMBOLS["binance"]}, rate=40) as urls:
        server = urls.servers["binance"]
        server.faults = plan
        streamer, summary = await run_until(settings, sim_feed("binance", urls), done=all_synced)
        requests = server.rest_requests
    rest = streamer.feeds[0].rest
    assert rest.banned == 1
    banned = [w for w in rest.waits if w.status == 418]
    assert len(banned) == 1 and banned[0].seconds >= 2
    # exchangeInfo, one snapshot per symbol, and one retry of the banned one: nothing more.
    assert requests == 1 + len(SYMBOLS["binance"]) + 1
    assert set(summary["books"]) == set(SYMBOLS["binance"])


# -- error frames and oversized frames --------------------------------------------


class InjectAfter(FaultPlan):
    """Sends ``extra`` once, right after ``after`` frames went out."""

    def __init__(self, extra: str, after: int = 100) -> None:
        self.extra = extra
        self.after = after
        self.seen = 0
        self.sent_at: int | None = None

    async def ws_frames(self, session, data):
        self.seen += 1
        if self.seen == self.after:
            self.sent_at = self.seen
            return (data, self.extra)
        return (data,)


async def test_oversized_frame_is_quarantined_and_the_connection_stays_up(settings):
    limit = 64 * 1024
    big = orjson.dumps({"arg": {"channel": "books", "instId": "ETH-USDT"}, "action": "update",
                        "data": [{"asks": [["3000.01", "1"]] * 8000, "bids": [], "ts": "1", "checksum": 0}]}).decode()
    assert len(big) > limit
    plan = InjectAfter(big, after=100)
    async with run_simulated_exchanges(["okx"], {"okx": SYMBOLS["okx"]}, rate=60) as urls:
        urls.servers["okx"].faults = plan
        feed = sim_feed("okx", urls, max_frame_bytes=limit)
        streamer, summary = await run_until(
            settings, feed, done=lambda s: plan.sent_at is not None and s.feeds[0].stats.frames > plan.after + 100,
            settle=all_synced,
        )
    rows = quarantine(settings, "okx")
    assert len(rows) == 1 == summary["rejected"]
    code, reason, raw = rows[0]
    assert code == "MAP-006"
    assert reason == f"oversized frame: {len(big)} bytes > limit {limit} bytes"
    assert len(raw) < 5000 and raw.endswith(f"[truncated: {len(big)} bytes in all]")
    # The connection stayed up: no reconnect, frames after it were processed, books intact.
    assert summary["reconnects"] == 0
    kinds = [event for _s, event, _d in feed_events(settings, "okx")]
    assert kinds.count("disconnected") == 1  # only the final stop
    assert not [k for k in kinds if k in ("gap", "checksum_failed", "resync")]
    assert set(summary["books"]) == set(SYMBOLS["okx"])


async def test_exchange_error_frames_are_counted_and_recorded(settings):
    error = '{"event":"error","code":"60012","msg":"Invalid request: injected","connId":"a1"}'
    plan = InjectAfter(error, after=50)
    async with run_simulated_exchanges(["okx"], {"okx": SYMBOLS["okx"]}, rate=60) as urls:
        urls.servers["okx"].faults = plan
        streamer, summary = await run_until(
            settings, sim_feed("okx", urls), done=lambda s: s.feeds[0].stats.exchange_errors >= 1,
            settle=all_synced,
        )
    assert summary["exchange_errors"] == 1 and summary["rejected"] == 0
    errors = [detail for _s, event, detail in feed_events(settings, "okx") if event == "error"]
    assert len(errors) == 1 and "60012" in errors[0]


# -- duplicates, reordering and bad values ----------------------------------------


def _assert_only_eth_affected(protocol: str, events: list[tuple[str, str, str]]) -> None:
    eth = ETH[protocol]
    for symbol, event, _detail in events:
        if event in ("gap", "checksum_failed", "resync"):
            assert symbol == eth, (symbol, event)


@pytest.mark.parametrize("protocol", ["binance", "okx"])
async def test_duplicated_updates_are_dropped_as_stale_or_resynced(protocol, settings):
    match = "depthUpdate" if protocol == "binance" else '"update"'
    plan = parse_fault_spec(f"duplicate:every=10,after=20,count=5,symbol={ETH[protocol]},match={match}")
    async with run_simulated_exchanges([protocol], {protocol: SYMBOLS[protocol]}, rate=60) as urls:
        urls.servers[protocol].faults = plan
        streamer, summary = await run_until(
            settings, sim_feed(protocol, urls), done=lambda s: plan.plans[0].applied == 5,
            settle=lambda s: all_synced(s) and s.feeds[0].pending_resyncs == 0,
        )
    events = feed_events(settings, protocol)
    _assert_only_eth_affected(protocol, events)
    eth_sync = next(sync for sync in streamer.feeds[0].books.values() if sync.symbol == ETH[protocol])
    # The copy arrives right after the original. Binance's U/u say it is already
    # applied; on OKX its seqId is the one the book ends with. Either way it is
    # dropped and the book never breaks.
    assert eth_sync.dropped_stale >= 5
    assert summary["sequence_gaps"] == 0
    assert not any(event in ("gap", "resync") for _symbol, event, _ in events)
    assert summary["rejected"] == 0
    assert set(summary["books"]) == set(SYMBOLS[protocol])


@pytest.mark.parametrize("protocol", ["binance", "kraken", "okx"])
async def test_reordered_updates_resync_only_that_book(protocol, settings):
    plan = parse_fault_spec(f"reorder:every=15,after=20,hold=2,count=2,symbol={ETH[protocol]}")
    async with run_simulated_exchanges([protocol], {protocol: SYMBOLS[protocol]}, rate=60) as urls:
        urls.servers[protocol].faults = plan
        streamer, summary = await run_until(
            settings, sim_feed(protocol, urls), done=lambda s: plan.plans[0].released == 4,
            settle=lambda s: all_synced(s) and s.feeds[0].pending_resyncs == 0,
        )
    assert plan.plans[0].applied == 2
    events = feed_events(settings, protocol)
    _assert_only_eth_affected(protocol, events)
    assert summary["rejected"] == 0
    assert set(summary["books"]) == set(SYMBOLS[protocol])


#: A substring only the book frames of each protocol carry.
BOOK_FRAMES = {"binance": "depthUpdate", "kraken": "book-", "okx": "books"}


@pytest.mark.parametrize("frames", ["book", "any"])
@pytest.mark.parametrize("protocol", ["binance", "kraken", "okx"])
async def test_nan_prices_are_quarantined_with_a_reason(protocol, frames, settings):
    match = f",match={BOOK_FRAMES[protocol]}" if frames == "book" else ""
    plan = parse_fault_spec(f"corrupt:every=10,after=20,count=3,mode=nan,symbol={ETH[protocol]}{match}")
    async with run_simulated_exchanges([protocol], {protocol: SYMBOLS[protocol]}, rate=60) as urls:
        urls.servers[protocol].faults = plan
        streamer, summary = await run_until(
            settings, sim_feed(protocol, urls), done=lambda s: plan.plans[0].applied == 3,
            settle=lambda s: all_synced(s) and s.feeds[0].pending_resyncs == 0 and s.feeds[0].stats.rejected >= 3,
        )
    rows = quarantine(settings, protocol)
    assert len(rows) == summary["rejected"] >= 3
    assert all(code.startswith("MAP-") and reason for code, reason, _raw in rows)
    # A selected frame with no price in it (a subscription acknowledgement when
    # the book resubscribes) is cut in half instead, by the fault's own rule:
    # malformed JSON, quarantined as well. The first corrupted frame is always
    # a data frame (acknowledgements come only after a resync).
    assert all("NaN" in raw or code == "MAP-002" for code, _r, raw in rows), rows
    nan_rows = [raw for _c, _r, raw in rows if "NaN" in raw]
    assert nan_rows
    events = feed_events(settings, protocol)
    _assert_only_eth_affected(protocol, events)
    # The book a rejected book frame belonged to resynced at once (a NaN frame
    # that arrives while it is still resyncing is not another gap; a trade frame
    # is no book's).
    rejected_gaps = [d for _s, event, d in events if event == "gap" and d.startswith("frame rejected: MAP-003")]
    book_rows = [raw for raw in nan_rows if BOOK_FRAMES[protocol] in raw]
    assert len(rejected_gaps) <= len(book_rows)
    if frames == "book":
        assert book_rows == nan_rows and len(rejected_gaps) >= 1
    assert set(summary["books"]) == set(SYMBOLS[protocol])


# -- the CLI path: capture replay with --faults ------------------------------------


async def test_capture_replay_with_duplicate_faults_ends_with_the_same_books(settings, captures_dir):
    capture = captures_dir / "binance-spot.session1.jsonl.gz"
    if not capture.exists():
        pytest.skip(f"{capture.name} not in {captures_dir}")

    def args(faults):
        return Namespace(file=str(capture), exchange=None, speed=None, timeout=60.0, faults=faults)

    clean = await commands.capture_replay(args(None), settings)
    faulty = await commands.capture_replay(args("duplicate:every=7,match=depthUpdate"), settings)
    counters = faulty["faults"][0]
    assert counters["kind"] == "duplicate" and counters["applied"] > 0
    assert faulty["frames"] == clean["frames"] + counters["applied"]
    assert faulty["sequence_gaps"] == clean["sequence_gaps"]
    assert faulty["rejected"] == clean["rejected"]
    assert faulty["books"] == clean["books"]
