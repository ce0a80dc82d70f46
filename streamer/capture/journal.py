"""A recorded session as the streamer's journal would hold it.

Used to process a capture without any server (benchmarks of the processor,
tests): a connect record, then every received frame and every REST book
snapshot of the session, in recorded order, with their recorded times.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from ..exchanges.registry import get_mapper
from ..journal.records import Kind, Record
from .reader import HTTP, RECV, Capture, payload
from .replay import session_symbols


def journal_records(capture: Capture, protocol: str) -> tuple[list[str], list[Record]]:
    """(native symbols of the session, its records as journal records)."""
    natives = list(session_symbols(capture, protocol))
    mapper = get_mapper(protocol)
    snapshot_paths = {}
    for native in natives:
        request = mapper.snapshot_request(native)
        if request is not None:
            snapshot_paths[native] = request.path
    records = [Record(1, int(capture.records[0]["t"] * 1e6), Kind.CONNECT, "ws://replay", b"")]
    for rec in capture.records:
        ts = int(rec["t"] * 1e6)
        if rec["dir"] == RECV:
            data = payload(rec)
            binary = isinstance(data, bytes)
            records.append(Record(len(records) + 1, ts, Kind.WS_BINARY if binary else Kind.WS_TEXT, "",
                                  data if binary else data.encode()))
        elif rec["dir"] == HTTP and snapshot_paths:
            url = urlsplit(rec["url"])
            values = {value for _, value in parse_qsl(url.query)}
            for native, path in snapshot_paths.items():
                if url.path.endswith(path) and native in values:
                    records.append(Record(len(records) + 1, ts, Kind.HTTP, native, rec["data"].encode()))
                    break
    return natives, records
