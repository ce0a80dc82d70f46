"""Exchange-side faults for the suite: fault plans for the local exchange server.

Each plan is a :class:`~streamer.local.server.FaultPlan` that can be switched
on and off (``active``) while the server runs. Plans that add frames which
are not exchange data (garbage) say so through :meth:`InjectingPlan.is_injected`,
so the tick accounting never mistakes them for ticks.
"""

from __future__ import annotations

import time

import orjson

from ..local.server import FaultPlan

#: Symbol whose book updates the gap and checksum faults break (the others must not notice).
FAULT_SYMBOL = "ETH-USDT"


def is_book_update(protocol: str, frame, symbol: str = FAULT_SYMBOL) -> bool:
    if not isinstance(frame, str):
        return False
    if protocol == "binance":
        return '"depthUpdate"' in frame and f'"{symbol.replace("-", "")}"' in frame
    return '"books"' in frame and f'"{symbol}"' in frame and '"update"' in frame


def is_trade(protocol: str, frame) -> bool:
    if not isinstance(frame, str):
        return False
    if protocol == "binance":
        return '"e":"trade"' in frame or '"e":"aggTrade"' in frame
    return '"channel":"trades"' in frame


class SwitchablePlan(FaultPlan):
    """A plan that injects only while ``active``."""

    def __init__(self) -> None:
        self.active = False


class InjectingPlan(SwitchablePlan):
    """A plan that adds frames of its own; remembers them until the tap has seen them."""

    def __init__(self) -> None:
        super().__init__()
        self.injected = 0
        self._pending: dict[int, str] = {}

    def _inject(self, frame: str) -> str:
        self.injected += 1
        self._pending[id(frame)] = frame  # keeps the object (and so its id) alive until checked
        return frame

    def is_injected(self, frame) -> bool:
        return self._pending.pop(id(frame), None) is not None


class DisconnectStorm(SwitchablePlan):
    """While active, every connection is dropped (TCP abort, no close frame)
    ``interval`` seconds after it started or after the storm began."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self.disconnects = 0
        self._since: dict[int, float] = {}

    async def ws_frames(self, session, data):
        if not self.active:
            return (data,)
        now = time.monotonic()
        since = self._since.setdefault(id(session), now)
        if now - since < self.interval or session.closed:
            return (data,)
        self._since.pop(id(session), None)
        self.disconnects += 1
        await session.abort()
        return ()


class GapsAndChecksums(SwitchablePlan):
    """Breaks :data:`FAULT_SYMBOL`'s book: drops every ``drop_every``-th update
    (a sequence gap on Binance and OKX) and, on OKX, alters a size in every
    ``alter_every``-th update while keeping its sequence ids (a checksum failure,
    see :func:`_alter_okx_size`)."""

    def __init__(self, protocol: str, *, drop_every: int = 20, alter_every: int = 13) -> None:
        super().__init__()
        self.protocol = protocol
        self.drop_every = drop_every
        self.alter_every = alter_every if protocol == "okx" else 0
        self.seen = 0
        self.dropped = 0
        self.altered = 0

    async def ws_frames(self, session, data):
        if not self.active or not is_book_update(self.protocol, data):
            return (data,)
        self.seen += 1
        if self.seen % self.drop_every == 0:
            self.dropped += 1
            return ()
        if self.alter_every and self.seen % self.alter_every == 0:
            altered = _alter_okx_size(data)
            if altered is not None:
                self.altered += 1
                return (altered,)
        return (data,)


def _alter_okx_size(frame: str) -> str | None:
    """The frame with its first changed level's size altered (a valid decimal,
    so only the checksum can tell); None when it changes no level.

    That level may lie deeper than the 25 a side OKX's checksum covers, where
    no checksum would tell; the frame's stated checksum is changed too, so the
    frame always fails the check, as a corrupted frame does (a scenario with
    a handful of altered frames must see checksum failures every time)."""
    message = orjson.loads(frame)
    item = message["data"][0]
    for side in ("asks", "bids"):
        if item[side]:
            level = item[side][0]
            level[1] = "7.77" if level[1] != "7.77" else "8.88"
            if level[3] == "0":
                level[3] = "1"
            if isinstance(item.get("checksum"), int):
                item["checksum"] ^= 1
            return orjson.dumps(message).decode()
    return None


class MalformedFlood(InjectingPlan):
    """While active, after every ``every``-th trade frame, adds one bad frame:
    truncated JSON, a JSON value that is not an object, a NaN price, a
    negative size, a price of the wrong type, or an unknown symbol (in turn)."""

    KINDS = ("truncated", "not_an_object", "nan_price", "negative_size", "wrong_type", "unknown_symbol")

    def __init__(self, protocol: str, *, every: int = 2, limit: int = 500) -> None:
        super().__init__()
        self.protocol = protocol
        self.every = every
        self.limit = limit
        self.trades_seen = 0
        self.by_kind: dict[str, int] = {}

    async def ws_frames(self, session, data):
        if not self.active or self.injected >= self.limit or not is_trade(self.protocol, data):
            return (data,)
        self.trades_seen += 1
        if self.trades_seen % self.every:
            return (data,)
        kind = self.KINDS[self.injected % len(self.KINDS)]
        bad = self._mutate(data, kind)
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        return (data, self._inject(bad))

    def _mutate(self, frame: str, kind: str) -> str:
        if kind == "truncated":
            return frame[: len(frame) // 2]
        if kind == "not_an_object":
            return "[1, 2, 3]"
        message = orjson.loads(frame)
        if self.protocol == "binance":
            trade = message.get("data", message)
            price, size, symbol_holder, symbol_key, unknown = "p", "q", trade, "s", "DOGEUSDT"
        else:
            trade = message["data"][0]
            price, size, symbol_holder, symbol_key, unknown = "px", "sz", message["arg"], "instId", "DOGE-USDT"
        if kind == "nan_price":
            trade[price] = "NaN"
        elif kind == "negative_size":
            trade[size] = "-" + trade[size]
        elif kind == "wrong_type":
            trade[price] = {"not": "a price"}
        elif kind == "unknown_symbol":
            symbol_holder[symbol_key] = unknown
            if self.protocol == "okx":
                trade["instId"] = unknown
        return orjson.dumps(message).decode()
