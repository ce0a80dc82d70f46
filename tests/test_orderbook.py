"""OrderBook: exact strings, ordering, validation, and agreement with a naive model."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.book.orderbook import OrderBook, parse_levels
from streamer.errors import InvalidValueError, MalformedFrameError


def test_levels_are_sorted_best_first_and_keep_exchange_strings():
    book = OrderBook()
    for price, size in [("100.5", "1"), ("101.25", "2.50"), ("99", "3")]:
        book.apply("bid", price, size)
    for price, size in [("102.000", "4"), ("101.5", "5"), ("110", "6")]:
        book.apply("ask", price, size)

    assert book.top("bid", 10) == [("101.25", "2.50"), ("100.5", "1"), ("99", "3")]
    assert book.top("ask", 2) == [("101.5", "5"), ("102.000", "4")]
    assert list(book.levels("ask")) == [("101.5", "5"), ("102.000", "4"), ("110", "6")]
    assert book.best_bid() == ("101.25", "2.50")
    assert book.best_ask() == ("101.5", "5")
    assert len(book) == 6 and book.depth("bid") == 3 and book.depth("ask") == 3


def test_same_price_written_differently_is_one_level_and_zero_deletes():
    book = OrderBook()
    book.apply("bid", "100.0", "1")
    book.apply("bid", "100.00", "2")
    assert book.top("bid", 5) == [("100.00", "2")]
    book.apply("bid", "100", "0.0000")
    assert book.best_bid() is None and len(book) == 0
    # Deleting a level that does not exist is not an error.
    book.apply("ask", "5", "0")
    assert len(book) == 0


@pytest.mark.parametrize(
    "price,size",
    [("nan", "1"), ("1", "NaN"), ("inf", "1"), ("1", "-infinity"), ("-1", "1"), ("1", "-0.5"), ("abc", "1"),
     ("1", ""), (1.5, "1"), ("1", None)],
)
def test_invalid_values_raise_and_leave_the_book_unchanged(price, size):
    book = OrderBook()
    book.apply("bid", "10", "1")
    with pytest.raises(InvalidValueError):
        book.apply("bid", price, size)
    assert book.top("bid", 5) == [("10", "1")]


def test_unknown_side_is_rejected():
    with pytest.raises(ValueError):
        OrderBook().apply("buy", "1", "1")


def test_crossed_truncate_and_band():
    book = OrderBook()
    for i in range(1, 6):
        book.apply("bid", str(100 - i), str(i))
        book.apply("ask", str(100 + i), str(i))
    assert not book.is_crossed()
    assert [p for p, _ in book.band("bid", 96.0, 98.0)] == ["98", "97", "96"]
    assert [p for p, _ in book.band("ask", 102.5, 104.0)] == ["103", "104"]

    removed = book.truncate(2)
    assert sorted(removed) == sorted(
        [("bid", ("97", "3")), ("bid", ("96", "4")), ("bid", ("95", "5")),
         ("ask", ("103", "3")), ("ask", ("104", "4")), ("ask", ("105", "5"))]
    )
    assert book.top("bid", 10) == [("99", "1"), ("98", "2")]
    assert book.top("ask", 10) == [("101", "1"), ("102", "2")]

    book.apply("bid", "101", "7")  # best bid == best ask
    assert book.is_crossed()
    book.apply("bid", "101", "0")
    assert not book.is_crossed()


def test_to_snapshot_converts_to_decimals_best_first():
    book = OrderBook()
    book.apply("bid", "0.00000637", "6500.00000000")
    book.apply("bid", "0.00000636", "1")
    book.apply("ask", "0.00000638", "2")
    ts = datetime(2024, 1, 1, tzinfo=timezone.utc)
    snap = book.to_snapshot("binance", "LRC-BTC", ts, 42)
    assert snap.sequence == 42 and snap.timestamp == ts
    assert snap.best_bid.price == Decimal("0.00000637") and snap.best_bid.size == Decimal("6500")
    assert [lvl.price for lvl in snap.bids] == [Decimal("0.00000637"), Decimal("0.00000636")]
    assert snap.spread == Decimal("0.00000001")
    assert len(book.to_snapshot("binance", "LRC-BTC", ts, depth=1).bids) == 1


def test_parse_levels_validates_structure_and_values():
    assert parse_levels([["1.5", "2", "0", "3"], ["1.4", "0"]], "bids") == [("1.5", "2"), ("1.4", "0")]
    with pytest.raises(MalformedFrameError):
        parse_levels({"1": "2"}, "bids")
    with pytest.raises(MalformedFrameError):
        parse_levels([["1.5"]], "bids")
    with pytest.raises(MalformedFrameError):
        parse_levels([[1.5, "2"]], "bids")
    for bad in (["-1", "2"], ["1", "NaN"], ["1e5", "1"], [" 1", "1"], ["1_0", "1"], ["", "1"], ["1" * 400, "1"]):
        with pytest.raises(InvalidValueError):
            parse_levels([bad], "asks")


@pytest.mark.parametrize("bad", [
    ["-1", "2"], ["1", "NaN"], ["1e5", "1"], [" 1", "1"], ["1_0", "1"], ["", "1"], [".", "1"], ["1.2.3", "1"],
    ["1" * 400, "1"], ["1" * 25, "1"], ["\u0661\u0662", "1"], ["1\x002", "1"], [1, "1"], ["1"], "12",
    # The column check joins a column's fields with newlines: a field holding one must not pass for two.
    ["1\n2", "1"], ["1", "2\n"], ["\n", "1"],
])
@pytest.mark.parametrize("position", [0, 7, 39])
def test_long_level_lists_are_checked_as_strictly_as_short_ones(bad, position):
    """Lists of many levels take the column-wise checks; any bad level, wherever
    it is, still fails, with the same error class as one by one."""
    levels = [[f"{100 + i}.5", "2"] for i in range(40)]
    levels[position] = bad
    expected = InvalidValueError if isinstance(bad, list) and len(bad) == 2 and all(
        type(v) is str for v in bad) else MalformedFrameError
    with pytest.raises(expected):
        parse_levels(levels, "bids")
    good = [[f"{100 + i}.5", "2", "0", "1"] for i in range(40)] + [["0.0000000000000000000001", "1."], [".5", "0"]]
    assert parse_levels(good, "bids") == [(level[0], level[1]) for level in good]


def test_long_and_short_updates_give_the_same_book():
    """Long level lists take the column-wise path, short ones the per-level
    loop; both must build the same book, deletes and repeats included."""
    levels = [(f"{100 + i % 17}.{i % 3}", "0" if i % 5 == 0 else f"{i}.25") for i in range(60)]
    by_columns, one_by_one = OrderBook(), OrderBook()
    for side in ("bid", "ask"):
        by_columns.apply_levels(side, [("50", "1")])  # not empty: the incremental path
        one_by_one.apply_levels(side, [("50", "1")])
        by_columns.apply_levels(side, levels)
        for i in range(0, len(levels), 3):
            one_by_one.apply_levels(side, levels[i:i + 3])
    assert by_columns.top("bid", 100) == one_by_one.top("bid", 100)
    assert by_columns.top("ask", 100) == one_by_one.top("ask", 100)


@pytest.mark.parametrize("bad", [("nan", "1"), ("1", "inf"), ("-1", "1"), ("1", "-0.5"), (1.5, "1"), ("x", "1")])
def test_a_bad_level_in_a_long_update_is_refused(bad):
    levels = [(f"{100 + i}", "1") for i in range(30)]
    levels[17] = bad
    with pytest.raises((InvalidValueError, ValueError)):
        OrderBook().apply_levels("bid", levels)


# -- property: the book agrees with a naive dict of Decimals -------------------

_prices = st.integers(min_value=1, max_value=400).map(lambda i: i / 8)  # exact binary fractions
_price_text = _prices.flatmap(lambda p: st.sampled_from([repr(p), f"{p:.3f}", f"{p:.5f}"]))
_size_text = st.sampled_from(["0", "0.000", "1", "2.5", "0.125", "10.00"])
_ops = st.lists(st.tuples(st.sampled_from(["bid", "ask"]), _price_text, _size_text), max_size=200)


@settings(max_examples=200, deadline=None)
@given(_ops, st.integers(min_value=1, max_value=30))
def test_book_matches_a_naive_model(ops, depth):
    book = OrderBook()
    model = {"bid": {}, "ask": {}}
    for side, price, size in ops:
        book.apply(side, price, size)
        if Decimal(size) == 0:
            model[side].pop(Decimal(price), None)
        else:
            model[side][Decimal(price)] = (price, size)
    for side, reverse in (("bid", True), ("ask", False)):
        expected = [model[side][p] for p in sorted(model[side], reverse=reverse)]
        assert list(book.levels(side)) == expected
        assert book.top(side, depth) == expected[:depth]
    best_bid = max(model["bid"]) if model["bid"] else None
    best_ask = min(model["ask"]) if model["ask"] else None
    assert book.is_crossed() == (best_bid is not None and best_ask is not None and best_bid >= best_ask)


def test_a_pickled_book_comes_back_with_the_exchange_strings_in_order():
    import pickle

    book = OrderBook()
    book.apply_levels("bid", [(f"{100 - i}.{i:02d}", f"{i + 1}.500") for i in range(40)])
    book.apply_levels("ask", [("101.0", "1"), ("100.99", "0.1"), ("102", "3.0")])
    book.apply("ask", "103.5\n", "2")  # float() takes the newline; the pickled text must not split on it
    again = pickle.loads(pickle.dumps(book, protocol=pickle.HIGHEST_PROTOCOL))
    for side in ("bid", "ask"):
        assert list(again.levels(side)) == list(book.levels(side))
    assert again.best_ask() == ("100.99", "0.1") and again.depth("ask") == 4
    empty = pickle.loads(pickle.dumps(OrderBook()))
    assert len(empty) == 0 and empty.best_bid() is None
    # The copy is a book of its own.
    again.apply("bid", "100.00", "0")
    assert book.depth("bid") == 40 and again.depth("bid") == 39


def _model_levels(model: dict, side: str) -> list:
    return [model[side][p] for p in sorted(model[side], reverse=side == "bid")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["bid", "ask"]), st.lists(st.tuples(_price_text, _size_text), max_size=30)),
                max_size=20),
       st.integers(min_value=0, max_value=30), _prices, _prices)
def test_batched_updates_truncation_and_bands_match_a_naive_model(batches, depth, one, other):
    # Batches of every length take both the level-by-level and the column-wise
    # path, into an empty side (sorted once) and into a filled one (sorted inserts).
    book = OrderBook()
    model = {"bid": {}, "ask": {}}
    for side, levels in batches:
        book.apply_levels(side, levels)
        for price, size in levels:
            if Decimal(size) == 0:
                model[side].pop(Decimal(price), None)
            else:
                model[side][Decimal(price)] = (price, size)
        assert list(book.levels(side)) == _model_levels(model, side)
        assert book.depth(side) == len(model[side])
    low, high = min(one, other), max(one, other)
    for side in ("bid", "ask"):
        expected = [lvl for lvl in _model_levels(model, side) if low <= Decimal(lvl[0]) <= high]
        assert list(book.band(side, low, high)) == expected
    removed = book.truncate(depth)
    for side in ("bid", "ask"):
        levels = _model_levels(model, side)
        assert list(book.levels(side)) == levels[:depth]
        # Worst first, as the removed levels are reported.
        assert [lvl for s, lvl in removed if s == side] == levels[depth:][::-1]
    bids = _model_levels(model, "bid")[:depth]
    assert book.best_bid() == (bids[0] if bids else None)
