"""Property: no exception escapes ``map_message`` (or the BookSync behind it),
whatever the frame. Seeds are real recorded frames, mutated byte-wise and
structurally, plus arbitrary text and bytes."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.book.sync import BookSync
from streamer.capture.reader import iter_records, payload
from streamer.exchanges.registry import MAPPERS, get_mapper
from streamer.models import BookMessage, ControlEvent, Quarantine, TradeEvent

REPO = Path(__file__).resolve().parents[1]
FILES = {
    "binance": "binance-spot.session1.jsonl.gz",
    "kraken": "kraken-spot.session1.jsonl.gz",
    "okx": "okx.session1.jsonl.gz",
}
EVENT_TYPES = (BookMessage, TradeEvent, Quarantine, ControlEvent)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@lru_cache(maxsize=None)
def seeds(exchange: str) -> tuple[str, ...]:
    """A spread of distinct real frames of one session (every kind of frame it holds)."""
    configured = Path(os.environ.get("COBY_CAPTURES_DIR", "../shared/fixtures/captures"))
    path = (configured if configured.is_absolute() else REPO / configured) / FILES[exchange]
    if not path.is_file():
        return ()
    frames, shapes = [], set()
    for rec in iter_records(path, skip_meta=True):
        if rec["dir"] != "recv":
            continue
        raw = payload(rec)
        shape = raw[:40] if len(shapes) < 60 else None
        if shape is not None and shape not in shapes:
            shapes.add(shape)
            frames.append(raw)
    return tuple(frames)


def exercise(exchange: str, raw) -> None:
    mapper = get_mapper(exchange)
    events = mapper.map_message(raw, 1)
    assert isinstance(events, list) and all(isinstance(e, EVENT_TYPES) for e in events)
    for event in events:
        if isinstance(event, Quarantine):
            assert event.reason and event.code.startswith("MAP-") and isinstance(event.raw, str)
        if isinstance(event, BookMessage):
            # Whatever the mapper let through, the state machine copes with it.
            sync = BookSync(exchange, event.symbol, event.native_symbol, mapper.sync_rules())
            sync.on_message(event)
            event.is_snapshot = not event.is_snapshot
            sync.on_message(event)


def seed_frame(exchange: str):
    frames = seeds(exchange)
    if not frames:
        pytest.skip(f"recorded session {FILES[exchange]} not found (set COBY_CAPTURES_DIR)")
    return st.sampled_from(frames)


_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["NaN", "-1", "1e400", "", "0", "Infinity", "x"]),
    st.text(max_size=8), st.just([]), st.just({}),
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, prefix + (i,))


def _replace(node, path, value):
    if not path:
        return value
    node[path[0]] = _replace(node[path[0]], path[1:], value)
    return node


@pytest.mark.parametrize("exchange", sorted(MAPPERS))
def test_byte_mutations_of_real_frames_never_raise(exchange):
    base = seed_frame(exchange)

    @FUZZ
    @given(base, st.data())
    def check(raw, data):
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        cut = data.draw(st.integers(min_value=0, max_value=len(text)))
        how = data.draw(st.sampled_from(["truncate", "insert", "delete", "bytes"]))
        if how == "truncate":
            mutated = text[:cut]
        elif how == "insert":
            mutated = text[:cut] + data.draw(st.text(max_size=5)) + text[cut:]
        elif how == "delete":
            mutated = text[:cut] + text[cut + data.draw(st.integers(1, 5)):]
        else:
            mutated = text.encode()[:cut] + data.draw(st.binary(max_size=5)) + text.encode()[cut:]
        exercise(exchange, mutated)

    check()


@pytest.mark.parametrize("exchange", sorted(MAPPERS))
def test_structural_mutations_of_real_frames_never_raise(exchange):
    base = seed_frame(exchange)

    @FUZZ
    @given(base, st.data())
    def check(raw, data):
        try:
            tree = json.loads(raw)
        except ValueError:
            return
        paths = list(_paths(tree))
        for _ in range(data.draw(st.integers(1, 3))):
            path = data.draw(st.sampled_from(paths))
            try:
                tree = _replace(tree, path, data.draw(_json_leaf))
            except (KeyError, IndexError, TypeError):
                continue  # an earlier replacement removed this path
            paths = list(_paths(tree))
        exercise(exchange, json.dumps(tree))

    check()


@pytest.mark.parametrize("exchange", sorted(MAPPERS))
@FUZZ
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_arbitrary_input_never_raises(exchange, raw):
    exercise(exchange, raw)


@pytest.mark.parametrize("exchange", sorted(MAPPERS))
@FUZZ
@given(st.recursive(_json_leaf, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=6), c, max_size=5),
                    max_leaves=20))
def test_arbitrary_json_never_raises(exchange, tree):
    exercise(exchange, json.dumps(tree))
