"""Declarative, composable fault plans for the local exchange server.

Each plan is a :class:`~streamer.local.server.FaultPlan`: the server hands it
every outgoing WebSocket frame and every REST request, and the plan decides
what the client actually gets. Plans only touch the frames their
:class:`FrameFilter` selects (all frames, frames containing a substring, or
frames naming a symbol), and count what they saw and what they did, so a test
or an operator can check that a fault really happened.

A compact spec string builds plans from the command line or the control
endpoint (``POST /_coby/faults``)::

    drop:every=500
    duplicate:every=100,symbol=ETH-USDT
    reorder:every=200,hold=3
    corrupt:every=300,mode=nan            # mode: truncate | flip | nan
    disconnect:after=1000,times=5         # a disconnect storm
    stall:after=200,seconds=40
    rest:status=429,count=3,retry_after=1,match=/api/v3/depth

Several specs join with ``;`` into one :class:`FaultPlans`. Every frame plan
takes ``after`` (let that many selected frames through first), ``count``
(stop after that many faults) and the filter keys ``match`` and ``symbol``.
Spec values cannot contain ``,`` or ``;``.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import orjson

from ..errors import ConfigError
from .server import JSON, FaultPlan, WsSession, WsSessionClosed

Frame = str | bytes
RestAnswer = tuple[int, str | bytes, str] | tuple[int, str | bytes, str, Mapping[str, str]]

#: Kraken names bitcoin XBT; a ``symbol=BTC-USD`` filter must still find its frames.
_ASSET_ALIASES = {"BTC": ("BTC", "XBT"), "XBT": ("XBT", "BTC")}
#: First quoted decimal number in a frame: a price in every supported protocol's book and trade frames.
_QUOTED_DECIMAL = re.compile(r'"(-?\d+\.\d+)"')
_SYMBOL = re.compile(r"^[A-Za-z0-9]{1,20}[-/][A-Za-z0-9]{1,20}$")


class FaultSpecError(ConfigError):
    """A fault spec string could not be parsed; the message says what is wrong."""


class FrameFilter:
    """Which frames (or REST requests) a plan may touch.

    ``match`` is a plain substring. ``symbol`` (``ETH-USDT``) matches the
    quoted names every protocol uses: ``"ETH-USDT"`` (OKX), ``"ETHUSDT"`` and
    ``"ethusdt@`` (Binance), ``"ETH/USDT"`` (Kraken, with XBT for BTC).
    """

    __slots__ = ("match", "symbol", "_needles")

    def __init__(self, match: str | None = None, symbol: str | None = None) -> None:
        if symbol is not None and not _SYMBOL.match(symbol):
            raise FaultSpecError(f"symbol must look like BASE-QUOTE, got {symbol!r}")
        self.match = match or None
        self.symbol = symbol.upper() if symbol else None
        self._needles: tuple[str, ...] = _symbol_needles(self.symbol) if self.symbol else ()

    @property
    def selects_all(self) -> bool:
        return self.match is None and self.symbol is None

    def __call__(self, data: Frame) -> bool:
        if self.match is None and not self._needles:
            return True
        text = data if isinstance(data, str) else data.decode("latin-1")
        if self.match is not None and self.match not in text:
            return False
        return not self._needles or any(needle in text for needle in self._needles)

    def describe(self) -> dict[str, str]:
        out = {}
        if self.match is not None:
            out["match"] = self.match
        if self.symbol is not None:
            out["symbol"] = self.symbol
        return out


def _symbol_needles(symbol: str) -> tuple[str, ...]:
    base, quote = re.split(r"[-/]", symbol, maxsplit=1)
    needles: list[str] = []
    for b in _ASSET_ALIASES.get(base, (base,)):
        needles += [f'"{b}-{quote}"', f'"{b}{quote}"', f'"{b}/{quote}"', f'"{(b + quote).lower()}@']
    return tuple(needles)


class InjectedFault(FaultPlan):
    """A fault plan with a frame filter, a name, its parameters, and counters.

    ``seen`` counts selected frames (or requests), ``applied`` the faults done.
    """

    kind: ClassVar[str] = ""
    #: Spec keys this kind accepts, with their parsers (the filter keys are added by the parser).
    params: ClassVar[dict[str, Callable[[str, str], Any]]] = {}

    def __init__(self, *, match: str | None = None, symbol: str | None = None) -> None:
        self.filter = FrameFilter(match, symbol)
        self.seen = 0
        self.applied = 0

    def settings(self) -> dict[str, Any]:
        """The plan's parameters (for ``GET /_coby/faults`` and logs)."""
        return {}

    def counters(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.settings(), **self.filter.describe(),
                "seen": self.seen, "applied": self.applied}

    def spec(self) -> str:
        params = {**self.settings(), **self.filter.describe()}
        return self.kind + (":" + ",".join(f"{k}={v}" for k, v in params.items() if v is not None) if params else "")


class FrameFault(InjectedFault):
    """A fault applied to every ``every``-th selected frame, after ``after``
    selected frames went through, at most ``count`` times."""

    params = {"every": lambda k, v: _positive_int(k, v), "after": lambda k, v: _int(k, v, 0),
              "count": lambda k, v: _positive_int(k, v)}

    def __init__(self, *, every: int = 1, after: int = 0, count: int | None = None,
                 match: str | None = None, symbol: str | None = None) -> None:
        super().__init__(match=match, symbol=symbol)
        if every < 1 or after < 0 or (count is not None and count < 1):
            raise FaultSpecError(f"{self.kind}: every and count must be >= 1, after >= 0")
        self.every = every
        self.after = after
        self.count = count

    def settings(self) -> dict[str, Any]:
        return {"every": self.every, "after": self.after, "count": self.count}

    def _due(self, data: Frame) -> bool:
        """Count a selected frame; True when this one gets the fault."""
        if not self.filter(data):
            return False
        self.seen += 1
        if self.count is not None and self.applied >= self.count:
            return False
        position = self.seen - self.after
        return position > 0 and position % self.every == 0

    async def ws_frames(self, session: WsSession, data: Frame) -> Sequence[Frame]:
        if not self._due(data):
            return (data,)
        self.applied += 1
        return self.apply(data)

    def apply(self, data: Frame) -> Sequence[Frame]:
        raise NotImplementedError


class DropFrames(FrameFault):
    """Never send the frame (a lost message)."""

    kind = "drop"

    def apply(self, data: Frame) -> Sequence[Frame]:
        return ()


class DuplicateFrames(FrameFault):
    """Send the frame twice in a row (a replayed message)."""

    kind = "duplicate"

    def apply(self, data: Frame) -> Sequence[Frame]:
        return (data, data)


class CorruptFrames(FrameFault):
    """Send a damaged copy: cut in half (``truncate``), a few bytes flipped
    (``flip``), or the first quoted decimal (a price) replaced by ``"NaN"`` (``nan``)."""

    kind = "corrupt"
    MODES = ("truncate", "flip", "nan")
    params = {**FrameFault.params, "mode": lambda k, v: _choice(k, v, CorruptFrames.MODES),
              "seed": lambda k, v: _int(k, v, 0)}

    def __init__(self, *, mode: str = "truncate", seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise FaultSpecError(f"corrupt: mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        self.mode = mode
        self.seed = seed
        self._rng = random.Random(seed)  # reproducible damage

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "mode": self.mode}

    def apply(self, data: Frame) -> Sequence[Frame]:
        if self.mode == "truncate":
            return (data[: len(data) // 2],)
        raw = data.encode() if isinstance(data, str) else data
        if self.mode == "flip":
            damaged = bytearray(raw)
            for _ in range(max(1, len(damaged) // 200)):
                if damaged:
                    damaged[self._rng.randrange(len(damaged))] ^= 0xFF
            out = bytes(damaged)
            # A text frame must stay text: invalid UTF-8 shows up as replacement characters.
            return (out.decode("utf-8", "replace") if isinstance(data, str) else out,)
        text = raw.decode("utf-8", "replace")
        corrupted, replaced = _QUOTED_DECIMAL.subn('"NaN"', text, count=1)
        if not replaced:  # no price in this frame: damage it another way rather than pass it intact
            corrupted = text[: len(text) // 2]
        return (corrupted if isinstance(data, str) else corrupted.encode(),)


class ReorderFrames(FrameFault):
    """Hold the due frame and the next ``hold - 1`` selected frames, then send
    them in reverse order. Frames held when the client disconnects are lost
    with the connection, as on a real exchange."""

    kind = "reorder"
    params = {**FrameFault.params, "hold": lambda k, v: _int(k, v, 2)}

    def __init__(self, *, hold: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if hold < 2:
            raise FaultSpecError(f"reorder: hold must be >= 2, got {hold}")
        self.hold = hold
        self._held: list[Frame] = []
        self._session: WsSession | None = None
        self.released = 0
        self.discarded = 0

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "hold": self.hold}

    def counters(self) -> dict[str, Any]:
        return {**super().counters(), "held": len(self._held), "released": self.released,
                "discarded": self.discarded}

    async def ws_frames(self, session: WsSession, data: Frame) -> Sequence[Frame]:
        if self._held and session is not self._session:
            self.discarded += len(self._held)  # they belonged to a connection that is gone
            self._held = []
        if self._held:
            if not self.filter(data):
                return (data,)
            self.seen += 1
            self._held.append(data)
        elif self._due(data):
            self.applied += 1
            self._session = session
            self._held = [data]
        else:
            return (data,)
        if len(self._held) < self.hold:
            return ()
        released, self._held = self._held[::-1], []
        self.released += len(released)
        return released


class ConnectionFault(InjectedFault):
    """A fault that fires after ``after`` selected frames on one connection,
    ``times`` times in all: each new connection counts anew."""

    def __init__(self, *, after: int, times: int, match: str | None = None, symbol: str | None = None) -> None:
        super().__init__(match=match, symbol=symbol)
        self.after = after
        self.times = times
        self._session: WsSession | None = None
        self._on_session = 0

    def _count(self, session: WsSession, data: Frame) -> int | None:
        """This frame's number among the selected frames of its connection, or
        None when the fault is used up or the frame is not selected."""
        if self.applied >= self.times or not self.filter(data):
            return None
        if session is not self._session:
            self._session, self._on_session = session, 0
        self.seen += 1
        self._on_session += 1
        return self._on_session


class DisconnectAfter(ConnectionFault):
    """Abort the TCP connection (no close frame) after ``after`` selected frames
    on a connection, ``times`` times in all (each new connection counts anew):
    ``times`` > 1 is a disconnect storm."""

    kind = "disconnect"
    params = {"after": lambda k, v: _positive_int(k, v), "times": lambda k, v: _positive_int(k, v)}

    def __init__(self, *, after: int = 1000, times: int = 1, match: str | None = None,
                 symbol: str | None = None) -> None:
        if after < 1 or times < 1:
            raise FaultSpecError("disconnect: after and times must be >= 1")
        super().__init__(after=after, times=times, match=match, symbol=symbol)

    def settings(self) -> dict[str, Any]:
        return {"after": self.after, "times": self.times}

    async def ws_frames(self, session: WsSession, data: Frame) -> Sequence[Frame]:
        number = self._count(session, data)
        if number is None or number <= self.after:
            return (data,)
        self.applied += 1
        await session.abort()
        # The frame in flight is lost with the connection; the backend's send loop ends here.
        raise WsSessionClosed(f"fault plan disconnected the client on {session.path}")


class StallAfter(ConnectionFault):
    """Stop sending for ``seconds`` (the connection stays open) after ``after``
    selected frames on a connection, ``times`` times in all. The stall ends
    early if the client gives up and disconnects."""

    kind = "stall"
    params = {"after": lambda k, v: _positive_int(k, v), "seconds": lambda k, v: _positive_float(k, v),
              "times": lambda k, v: _positive_int(k, v)}

    def __init__(self, *, after: int = 100, seconds: float = 30.0, times: int = 1, match: str | None = None,
                 symbol: str | None = None) -> None:
        if after < 1 or times < 1 or not seconds > 0:
            raise FaultSpecError("stall: after and times must be >= 1, seconds > 0")
        super().__init__(after=after, times=times, match=match, symbol=symbol)
        self.seconds = seconds
        self.stalling = False

    def settings(self) -> dict[str, Any]:
        return {"after": self.after, "seconds": self.seconds, "times": self.times}

    async def ws_frames(self, session: WsSession, data: Frame) -> Sequence[Frame]:
        if self._count(session, data) != self.after + 1:
            return (data,)
        self.applied += 1
        self.stalling = True
        try:
            loop = asyncio.get_running_loop()
            until = loop.time() + self.seconds
            # Poll for the client leaving: a stalled connection it dropped must not hold this sender.
            while not session.closed and (left := until - loop.time()) > 0:
                await asyncio.sleep(min(0.05, left))
        finally:
            self.stalling = False
        return (data,)


class RestFailures(InjectedFault):
    """Answer the next ``count`` selected REST requests with HTTP ``status``
    (429 rate limit, 418 IP ban, or a 5xx), with ``Retry-After`` when given."""

    kind = "rest"
    params = {"status": lambda k, v: _int(k, v, 400, 599), "count": lambda k, v: _positive_int(k, v),
              "retry_after": lambda k, v: _int(k, v, 0, 3600), "after": lambda k, v: _int(k, v, 0)}

    def __init__(self, *, status: int = 429, count: int = 1, retry_after: int | None = None, after: int = 0,
                 match: str | None = None, symbol: str | None = None) -> None:
        super().__init__(match=match, symbol=symbol)
        if not (400 <= status <= 599) or count < 1 or after < 0:
            raise FaultSpecError("rest: status must be 400..599, count >= 1, after >= 0")
        if retry_after is None and status in (429, 418):
            retry_after = 1  # what a rate-limited client needs to know to wait
        self.status = status
        self.count = count
        self.retry_after = retry_after
        self.after = after

    def settings(self) -> dict[str, Any]:
        return {"status": self.status, "count": self.count, "retry_after": self.retry_after, "after": self.after}

    async def rest_response(self, path: str, query: Mapping[str, str]) -> RestAnswer | None:
        if self.applied >= self.count:
            return None
        target = path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
        if not self.filter(target if self.filter.symbol is None else _quoted_query(path, query)):
            return None
        self.seen += 1
        if self.seen <= self.after:
            return None
        self.applied += 1
        body = orjson.dumps({"code": -1003 if self.status in (429, 418) else -1000,
                             "msg": _REST_MESSAGES.get(self.status, "injected server error")}).decode()
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        return self.status, body, JSON, headers


_REST_MESSAGES = {429: "Too many requests; injected rate limit.", 418: "IP banned; injected ban."}


def _quoted_query(path: str, query: Mapping[str, str]) -> str:
    """The request as text in which symbol filters find their quoted forms."""
    return path + " " + " ".join(f'"{v}" "{v.lower()}@' for v in query.values())


class FaultPlans(FaultPlan):
    """Several plans at once: each frame passes through every plan in order;
    the first plan with a REST answer wins."""

    def __init__(self, plans: Sequence[FaultPlan]) -> None:
        self.plans = list(plans)

    async def ws_frames(self, session: WsSession, data: Frame) -> Sequence[Frame]:
        frames: Sequence[Frame] = (data,)
        for plan in self.plans:
            out: list[Frame] = []
            for frame in frames:
                out.extend(await plan.ws_frames(session, frame))
            frames = out
            if not frames:
                break
        return frames

    async def rest_response(self, path: str, query: Mapping[str, str]) -> RestAnswer | None:
        for plan in self.plans:
            answer = await plan.rest_response(path, query)
            if answer is not None:
                return answer
        return None

    def counters(self) -> list[dict[str, Any]]:
        return [describe_plan(plan) for plan in self.plans]

    def spec(self) -> str:
        return ";".join(plan.spec() if isinstance(plan, (InjectedFault, FaultPlans)) else type(plan).__name__
                        for plan in self.plans)


def describe_plan(plan: FaultPlan | None) -> Any:
    """Counters of any installed plan (custom plans report their class name)."""
    if plan is None:
        return []
    if isinstance(plan, (InjectedFault, FaultPlans)):
        return plan.counters()
    return {"kind": type(plan).__name__}


FAULT_KINDS: dict[str, type[InjectedFault]] = {
    cls.kind: cls
    for cls in (DropFrames, DuplicateFrames, ReorderFrames, CorruptFrames, DisconnectAfter, StallAfter, RestFailures)
}
_FILTER_KEYS = {"match": lambda k, v: v, "symbol": lambda k, v: v}


def parse_fault_spec(spec: str) -> FaultPlans:
    """``"drop:every=500;disconnect:after=1000,times=5"`` -> the plans, in order.

    Raises :class:`FaultSpecError` naming the bad part.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise FaultSpecError("empty fault spec; expected e.g. 'drop:every=500' (kinds: " + ", ".join(FAULT_KINDS) + ")")
    plans: list[FaultPlan] = []
    for part in spec.split(";"):
        part = part.strip()
        if part:
            plans.append(_parse_one(part))
    if not plans:
        raise FaultSpecError(f"no fault in spec {spec!r}")
    return FaultPlans(plans)


def _parse_one(part: str) -> InjectedFault:
    kind, _, rest = part.partition(":")
    kind = kind.strip().lower()
    cls = FAULT_KINDS.get(kind)
    if cls is None:
        raise FaultSpecError(f"unknown fault kind {kind!r} in {part!r}; known: {', '.join(FAULT_KINDS)}")
    allowed = {**cls.params, **_FILTER_KEYS}
    kwargs: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not value:
            raise FaultSpecError(f"{kind}: expected key=value, got {item!r}")
        if key not in allowed:
            raise FaultSpecError(f"{kind}: unknown key {key!r}; allowed: {', '.join(sorted(allowed))}")
        if key in kwargs:
            raise FaultSpecError(f"{kind}: {key} given twice")
        kwargs[key] = allowed[key](f"{kind}: {key}", value)
    return cls(**kwargs)


def _int(key: str, value: str, minimum: int, maximum: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise FaultSpecError(f"{key} must be an integer, got {value!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise FaultSpecError(f"{key} must be {bound}, got {number}")
    return number


def _positive_int(key: str, value: str) -> int:
    return _int(key, value, 1)


def _positive_float(key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise FaultSpecError(f"{key} must be a number, got {value!r}") from None
    if not (number > 0 and number < float("inf")):
        raise FaultSpecError(f"{key} must be a positive number, got {value!r}")
    return number


def _choice(key: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise FaultSpecError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return value
