"""One recorded session split by symbol into K sessions, one per shard.

A sharded deployment runs one exchange's symbols over K connections (usually
K streamer processes). To measure it on the same frames as the unsplit
benchmark, each shard is served the recorded frames of its own symbols:

* the symbols are divided into K groups balanced by their number of frames
  (largest first, each to the lightest group), no group empty. ``coby stream``
  deals symbols round robin, not knowing their traffic in advance; a capture
  does know it, and equal shards keep one process from setting the pace;
* a shard's capture keeps the meta header and every non-``recv`` record
  (REST bodies, connects, sends: each shard's client syncs its books from the
  same REST snapshots) and only the ``recv`` frames of its symbols;
* connection-wide frames (heartbeats, status events, subscribe replies without
  a symbol) go to shard 1 only, so the shards' frames add up to exactly the
  capture's.

Which symbol a frame belongs to is read per protocol, with the same spelling
as :func:`~streamer.capture.replay.session_symbols` (the names a feed
subscribes to):

* kraken: the pair, last element of a WS v1 data frame
  ``[channelID, data..., "book-10", "XBT/USD"]``, or ``pair`` of a
  ``subscriptionStatus`` event; ``heartbeat``/``systemStatus`` are connection-wide;
* okx: ``arg.instId`` of data frames and of subscribe events; an event without
  one (``error``) is connection-wide;
* binance: the symbol prefix of a combined-stream frame's ``stream``
  (``nknusdt@depth@100ms`` -> ``NKNUSDT``), else ``data.s`` / ``s``;
  ``{"result": null, "id": ...}`` replies are connection-wide.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ...capture.reader import RECV, Capture, payload
from ...capture.replay import (
    SessionSymbols,
    binance_stream_parts,
    kraken_channel,
    loads_frame,
    okx_inst_id,
    protocol_of,
    session_symbols,
)
from ...errors import ConfigError


def kraken_frame_symbol(msg: object) -> str | None:
    channel = kraken_channel(msg)
    if channel is not None:
        return channel[1]
    if isinstance(msg, dict) and isinstance(msg.get("pair"), str):  # subscriptionStatus
        return msg["pair"]
    return None


def okx_frame_symbol(msg: object) -> str | None:
    return okx_inst_id(msg.get("arg")) if isinstance(msg, dict) else None


def binance_frame_symbol(msg: object) -> str | None:
    if not isinstance(msg, dict):
        return None
    stream = msg.get("stream")
    if isinstance(stream, str) and "@" in stream:
        return binance_stream_parts(stream)[0]
    data = msg.get("data", msg)  # a raw (not combined) stream frame is the data itself
    if isinstance(data, dict) and isinstance(data.get("s"), str):
        return data["s"]
    return None


#: Per protocol: the native symbol of a decoded received frame, or None for a connection-wide one.
FRAME_SYMBOL: dict[str, Callable[[object], str | None]] = {
    "binance": binance_frame_symbol,
    "kraken": kraken_frame_symbol,
    "okx": okx_frame_symbol,
}


def frame_symbol(record: dict, protocol: str) -> str | None:
    """The native symbol a ``recv`` record belongs to, or None if it concerns the whole connection."""
    return FRAME_SYMBOL[protocol](loads_frame(payload(record)))


@dataclass(frozen=True)
class Shard:
    """One shard of a split capture."""

    #: "1", "2", ... (what :attr:`streamer.feed.FeedConfig.shard` takes).
    shard: str
    #: The meta and non-recv records of the whole capture, the recv frames of this shard.
    capture: Capture
    #: The session's symbols restricted to this shard's group (what its feed subscribes to).
    symbols: SessionSymbols

    @property
    def frames(self) -> int:
        return sum(1 for rec in self.capture.records if rec["dir"] == RECV)


def split_capture(capture: Capture, shards: int, protocol: str | None = None) -> list[Shard]:
    """``capture`` split by symbol into ``shards`` captures (see the module docstring).

    Raises :class:`ConfigError` unless ``1 <= shards <= `` the session's symbol count.
    """
    protocol = protocol or protocol_of(capture)
    symbols = session_symbols(capture, protocol)
    if not 1 <= shards <= len(symbols):
        raise ConfigError(f"cannot split {capture.path.name} into {shards} shards: it has {len(symbols)} symbols "
                          f"({', '.join(symbols)}); give 1 to {len(symbols)}")
    owners = [frame_symbol(rec, protocol) if rec["dir"] == RECV else None for rec in capture.records]
    frames = dict.fromkeys(symbols, 0)
    shared = 0  # frames shard 1 carries for the whole connection
    for rec, owner in zip(capture.records, owners):
        if rec["dir"] != RECV:
            continue
        if owner in frames:
            frames[owner] += 1
        else:
            # Connection-wide, or a symbol the session never subscribed to (served to
            # every client unsplit, too): no feed owns it, so it rides with shard 1's.
            shared += 1
    groups = balance(frames, shards, first_load=shared)
    group_of = {symbol: i for i, group in enumerate(groups) for symbol in group}
    out = []
    for i, group in enumerate(groups):
        records = tuple(rec for rec, owner in zip(capture.records, owners)
                        if rec["dir"] != RECV or group_of.get(owner, 0) == i)
        members = set(group)
        restricted = SessionSymbols([s for s in symbols.book if s in members],
                                    [s for s in symbols.trades if s in members])
        out.append(Shard(str(i + 1), replace(capture, records=records), restricted))
    return out


def balance(weights: dict[str, int], groups: int, *, first_load: int = 0) -> list[list[str]]:
    """The keys of ``weights`` in ``groups`` groups of about equal total weight.

    Largest first, each to the lightest group (ties: the lower index); a group
    with no key yet comes before any other, so none stays empty when there are
    enough keys (even weightless ones). ``first_load`` is weight group 0
    already carries. Each group lists its keys in the order of ``weights``.
    """
    loads = [first_load] + [0] * (groups - 1)
    members: list[list[str]] = [[] for _ in range(groups)]
    for key in sorted(weights, key=lambda k: -weights[k]):  # stable: ties keep the session's order
        i = min(range(groups), key=lambda g: (bool(members[g]), loads[g], g))
        members[i].append(key)
        loads[i] += weights[key]
    order = {key: n for n, key in enumerate(weights)}
    return [sorted(group, key=order.__getitem__) for group in members]
