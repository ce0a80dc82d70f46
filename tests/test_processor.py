"""The feed processor: deterministic, I/O-free processing of journal records."""

from __future__ import annotations

import pickle

import pytest

from streamer.capture.journal import journal_records
from streamer.capture.reader import load_capture
from streamer.capture.replay import session_symbols
from streamer.contract import BOOK_UPDATES, FEED_EVENTS, TRADES
from streamer.exchanges.registry import get_mapper
from streamer.journal.records import Kind, Record
from streamer.processor import FeedProcessor

from .reference_books import CAPTURE_FILES, REFERENCE


def capture_records(path, protocol: str) -> list[Record]:
    return journal_records(load_capture(path), protocol)[1]


def run(processor: FeedProcessor, records: list[Record]) -> list[tuple]:
    produced = []
    for record in records:
        out = processor.process(record)
        for table, table_rows in out.rows.items():
            produced.extend((table.name, row) for row in table_rows)
    return produced


@pytest.mark.parametrize("protocol", ["binance", "kraken", "okx"])
def test_captures_process_to_reference_books_deterministically(protocol, captures_dir):
    path = captures_dir / CAPTURE_FILES[protocol]
    natives = list(session_symbols(load_capture(path), protocol))
    records = capture_records(path, protocol)

    first = FeedProcessor(protocol, get_mapper(protocol), natives)
    rows_first = run(first, records)
    second = FeedProcessor(protocol, get_mapper(protocol), natives)
    assert run(second, records) == rows_first  # same records, same rows

    stats = first.stats
    assert stats.sequence_gaps == 0 and stats.rejected == 0
    assert sum(s.checksum_failed for s in first.books.values()) == 0
    assert stats.book_updates == sum(1 for table, _ in rows_first if table == BOOK_UPDATES.name) > 0
    assert stats.trades == sum(1 for table, _ in rows_first if table == TRADES.name)
    for native, (bid, ask) in REFERENCE[protocol](path).items():
        book = first.books[native].book
        assert book.best_bid() is not None and float(book.best_bid()[0]) == float(bid[0])
        assert float(book.best_ask()[0]) == float(ask[0])


@pytest.mark.parametrize("protocol", ["binance", "kraken", "okx"])
def test_pickled_state_resumes_to_identical_output(protocol, captures_dir):
    """A STATE record (the pickled processor) is a base that recovery can resume from."""
    path = captures_dir / CAPTURE_FILES[protocol]
    natives = list(session_symbols(load_capture(path), protocol))
    records = capture_records(path, protocol)
    half = len(records) // 2

    whole = FeedProcessor(protocol, get_mapper(protocol), natives)
    run(whole, records[:half])
    state = pickle.dumps(whole)
    tail_live = run(whole, records[half:])

    resumed = pickle.loads(state)
    assert run(resumed, records[half:]) == tail_live


def test_a_connect_after_a_crash_records_the_gap(captures_dir):
    path = captures_dir / CAPTURE_FILES["okx"]
    natives = list(session_symbols(load_capture(path), "okx"))
    records = capture_records(path, "okx")[:50]
    processor = FeedProcessor("okx", get_mapper("okx"), natives)
    run(processor, records)
    last_ts = records[-1].local_ts
    out = processor.process(Record(51, last_ts + 60_000_000, Kind.CONNECT, "ws://again", b""))
    events = [row for row in out.rows[FEED_EVENTS]]
    kinds = [row[FEED_EVENTS.column_names.index("event")] for row in events]
    assert kinds[:2] == ["disconnected", "connected"]
    assert events[0][0] == last_ts  # the gap starts at the last record before the crash
    assert "unexpectedly" in events[0][FEED_EVENTS.column_names.index("detail")]
    assert all(not s.is_synced for s in processor.books.values())


def test_connect_record_carries_the_symbol_set():
    """A restart with a new configuration: processing from its connect uses the new symbols."""
    import orjson

    processor = FeedProcessor("okx", get_mapper("okx"), ["BTC-USDT"])
    processor.process(Record(1, 1, Kind.CONNECT, "ws://a", b""))
    assert list(processor.books) == ["BTC-USDT"]
    payload = orjson.dumps({"natives": ["ETH-USDT", "SOL-USDT"], "instruments": ""})
    processor.process(Record(2, 2, Kind.CONNECT, "ws://b", payload))
    assert list(processor.books) == ["ETH-USDT", "SOL-USDT"]
    out = processor.process(Record(3, 3, Kind.WS_TEXT, "", b'{"arg":{"channel":"trades","instId":"BTC-USDT"},'
                                   b'"data":[{"instId":"BTC-USDT","tradeId":"1","px":"1","sz":"1","side":"buy","ts":"1"}]}'))
    assert processor.stats.rejected == 1 and not out.trades  # BTC-USDT is no longer subscribed


class CountingMapper(type(get_mapper("okx"))):
    """The OKX mapper, counting how often it maps an instrument body (module level: it is pickled)."""

    mapped = 0

    def map_instruments(self, body):
        CountingMapper.mapped += 1
        return super().map_instruments(body)


def test_the_same_instrument_body_is_mapped_once_over_reconnects_and_a_new_one_again():
    import orjson

    CountingMapper.mapped = 0
    def connect(seq: int, body: str) -> Record:
        return Record(seq, seq, Kind.CONNECT, "ws://a", orjson.dumps({"natives": ["BTC-USDT"], "instruments": body}))

    body = orjson.dumps({"code": "0", "data": [{"instId": "BTC-USDT", "baseCcy": "BTC", "quoteCcy": "USDT",
                                                "instType": "SPOT", "tickSz": "0.1", "lotSz": "0.00000001"}]}).decode()
    processor = FeedProcessor("okx", CountingMapper(), ["BTC-USDT"])
    for seq in (1, 2, 3):
        processor.process(connect(seq, body))
    assert CountingMapper.mapped == 1
    # A pickled processor (a STATE record) remembers what its mapper has loaded.
    restored = pickle.loads(pickle.dumps(processor))
    restored.process(connect(4, body))
    assert CountingMapper.mapped == 1
    changed = body.replace("0.1", "0.01")
    restored.process(connect(5, changed))
    assert CountingMapper.mapped == 2
    # A body that cannot be used is reported on every connect, and is not remembered.
    out = [restored.process(connect(seq, "not json")) for seq in (6, 7)]
    assert CountingMapper.mapped == 4
    assert all(any(row[3] == "error" for row in o.rows.get(FEED_EVENTS, [])) for o in out)
    restored.process(connect(8, changed))
    assert CountingMapper.mapped == 5


def test_a_frame_that_crosses_the_book_is_recorded_and_quarantined_with_its_reason():
    from streamer.contract import QUARANTINE

    processor = FeedProcessor("okx", get_mapper("okx"), ["BTC-USDT"])
    processor.process(Record(1, 1, Kind.CONNECT, "ws://a", b""))
    snapshot = (b'{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"snapshot","data":[{'
                b'"asks":[["101","1","0","1"]],"bids":[["99","1","0","1"]],"ts":"1","checksum":0}]}')
    processor.process(Record(2, 2, Kind.WS_TEXT, "", snapshot))
    crossing = (b'{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{'
                b'"asks":[],"bids":[["102","1","0","1"]],"ts":"2","checksum":0}]}')
    out = processor.process(Record(3, 3, Kind.WS_TEXT, "", crossing))
    names = QUARANTINE.column_names
    [row] = out.rows[QUARANTINE]
    assert row[names.index("code")] == "SYN-004"
    assert "crossed book" in row[names.index("reason")]
    assert row[names.index("raw")] == crossing.decode()
    assert processor.stats.crossed == 1 and processor.stats.rejected == 1
    assert processor.books["BTC-USDT"].is_synced  # the exchange's state is kept


def test_a_book_whose_snapshot_never_comes_asks_again():
    """A lost or rejected in-band snapshot must not leave the book unsynced forever."""
    processor = FeedProcessor("okx", get_mapper("okx"), ["BTC-USDT"])
    processor.process(Record(1, 0, Kind.CONNECT, "ws://a", b""))
    update = (b'{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{'
              b'"asks":[["101","1","0","1"]],"bids":[],"ts":"1","checksum":0}]}')
    early = processor.process(Record(2, 1_000_000, Kind.WS_TEXT, "", update))
    assert early.resyncs == []  # the subscription's snapshot may still be on its way
    late = processor.process(Record(3, 6_000_001, Kind.WS_TEXT, "", update))
    assert [s.native_symbol for s in late.resyncs] == ["BTC-USDT"]
    again = processor.process(Record(4, 7_000_000, Kind.WS_TEXT, "", update))
    assert again.resyncs == []  # asked one second ago: wait for it


def _synced_okx_processor(count: int) -> FeedProcessor:
    """An OKX processor with ``count`` books, each synced from a one-level snapshot."""
    natives = [f"A{i}-USDT" for i in range(count)]
    processor = FeedProcessor("okx", get_mapper("okx"), natives)
    processor.process(Record(1, 1, Kind.CONNECT, "ws://a", b""))
    for i, native in enumerate(natives):
        frame = ('{"arg":{"channel":"books","instId":"%s"},"action":"snapshot","data":[{'
                 '"asks":[["%d.5","1","0","1"]],"bids":[["%d","2","0","1"]],"ts":"1","checksum":0}]}' % (native, i + 10, i + 10))
        processor.process(Record(2 + i, 2 + i, Kind.WS_TEXT, "", frame.encode()))
    return processor


def test_a_snapshot_tick_in_parts_writes_what_one_tick_writes():
    from streamer.contract import BOOK_SNAPSHOTS
    from streamer.journal.records import tick_parts

    whole = _synced_okx_processor(250).process(Record(900, 5_000, Kind.SNAPSHOT_TICK, "", b"")).rows[BOOK_SNAPSHOTS]
    assert len(whole) == 500  # a bid and an ask per book
    processor = _synced_okx_processor(250)
    parts = tick_parts(len(processor.books))
    assert parts == ["0:100", "100:200", "200:300"]
    rows_by_part = [processor.process(Record(900 + n, 5_000, Kind.SNAPSHOT_TICK, part, b"")).rows[BOOK_SNAPSHOTS]
                    for n, part in enumerate(parts)]
    assert [len(r) for r in rows_by_part] == [200, 200, 100]
    assert [row for part in rows_by_part for row in part] == whole
    assert processor.stats.snapshots_written == 250


def test_a_snapshot_tick_part_it_cannot_read_is_reported_and_every_book_written():
    from streamer.contract import BOOK_SNAPSHOTS

    processor = _synced_okx_processor(3)
    out = processor.process(Record(900, 5_000, Kind.SNAPSHOT_TICK, "7:x", b""))
    assert len(out.rows[BOOK_SNAPSHOTS]) == 6
    [event] = out.rows[FEED_EVENTS]
    assert "error" in event and "snapshot tick part" in event[-1]


def test_tick_parts_cover_every_book_once():
    from streamer.journal.records import tick_part, tick_parts

    assert tick_parts(0) == tick_parts(100) == [""]
    for books in (101, 199, 200, 1000, 1234):
        covered = [i for part in tick_parts(books) for i in range(*tick_part(part))]
        assert covered[:books] == list(range(books)) and len(covered) - books < 100
    for bad in ("", "1", "a:b", "5:5", "-1:3", "3:1"):
        with pytest.raises(ValueError):
            tick_part(bad)


def test_a_rejected_book_frame_resyncs_only_its_book_at_once():
    """A NaN price in one book's update: that book missed an update, so it stops
    being published and resyncs now, not when a later frame's checksum fails."""
    from streamer.contract import QUARANTINE

    processor = _synced_okx_processor(2)
    nan_update = (b'{"arg":{"channel":"books","instId":"A0-USDT"},"action":"update","data":[{'
                  b'"asks":[["NaN","1","0","1"]],"bids":[],"ts":"2","checksum":0}]}')
    out = processor.process(Record(10, 10, Kind.WS_TEXT, "", nan_update))
    [row] = out.rows[QUARANTINE]
    assert row[QUARANTINE.column_names.index("code")] == "MAP-003"
    assert [s.native_symbol for s in out.resyncs] == ["A0-USDT"]
    assert [s.native_symbol for s in out.unsynced] == ["A0-USDT"]
    assert not processor.books["A0-USDT"].is_synced and processor.books["A1-USDT"].is_synced
    events = [(row[FEED_EVENTS.column_names.index("symbol")], row[FEED_EVENTS.column_names.index("event")],
               row[FEED_EVENTS.column_names.index("detail")]) for row in out.rows[FEED_EVENTS]]
    assert [e[:2] for e in events] == [("A0-USDT", "gap"), ("A0-USDT", "resync")]
    assert events[0][2].startswith("frame rejected: MAP-003")
    assert processor.stats.rejected == 1 and processor.stats.sequence_gaps == 1
    # While it waits for its snapshot, a second bad frame of the same book is
    # quarantined but is not another gap, and asks for nothing more.
    again = processor.process(Record(11, 11, Kind.WS_TEXT, "", nan_update))
    assert again.resyncs == [] and FEED_EVENTS not in again.rows
    assert processor.stats.rejected == 2 and processor.stats.sequence_gaps == 1


@pytest.mark.parametrize("protocol, native, frame", [
    ("kraken", "XBT/USD", '[1,{"a":[["NaN","1.0","1700000000.000001"]],"c":"1"},"book-10","XBT/USD"]'),
    ("okx", "BTC-USDT", '{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update",'
                        '"data":[{"asks":[["1","x","0","1"]],"bids":[],"ts":"2"}]}'),
    ("binance", "BTCUSDT", '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT",'
                           '"U":5,"u":4,"b":[],"a":[]}}'),
])
def test_a_rejected_book_frame_names_its_book(protocol, native, frame):
    [item] = get_mapper(protocol).map_message(frame, 1)
    assert item.book == native and item.code in ("MAP-002", "MAP-003")


@pytest.mark.parametrize("protocol, frame", [
    ("kraken", '[2,[["NaN","1.0","1700000000.1","b","l",""]],"trade","XBT/USD"]'),
    ("okx", '{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"bogus","data":[]}'),
    ("binance", '{"stream":"x","data":{"e":"depthUpdate","E":1,"s":7,"U":1,"u":2,"b":[],"a":[]}}'),
])
def test_frames_of_no_known_book_name_none(protocol, frame):
    """Trades, and book frames rejected before their symbol is read, name no book."""
    [item] = get_mapper(protocol).map_message(frame, 1)
    assert item.book is None and item.code.startswith("MAP-")
