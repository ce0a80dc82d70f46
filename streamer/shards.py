"""One exchange's symbols split over several connections: shards.

One streamer process runs on one core; an exchange with many busy symbols
can need more than that. ``coby stream --processes N`` first spreads whole
exchanges over the processes; when there are more processes than exchanges,
it splits the exchanges with the most symbols per connection into shards
until every process has one (:func:`plan_feeds`). A stream spec can also
name a shard itself: ``okx@1:BTC-USDT,SOL-USDT okx@2:ETH-USDT``.

A shard is a feed of its own, named ``exchange@shard`` (``okx@2``): its own
connection, journal, checkpoint stream and Redis status hash
(``status:okx@2``). Its connection events (connected, disconnected, stall)
carry ``@2`` in the ``symbol`` column, so the quality scores can follow each
connection. Everything a reader uses stays per exchange and symbol (rows,
Redis books and trades): readers never see shards.

Symbols are dealt out round-robin in the order given. Symbol lists usually
start with the busiest instruments, so dealing spreads them over the shards.

Changing the layout (the number of processes, or the specs) is safe after a
clean stop. After a crash, the journals of the previous layout may hold
records PostgreSQL does not have yet; only a feed of the same name replays
them. :func:`check_layout` refuses to start a layout that would leave such a
journal behind, and names it.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg

from .config import Settings
from .contract import feed_name
from .errors import ConfigError
from .journal.log import last_seq
from .sinks.postgres import read_checkpoints_sql

#: A shard label: a small positive number ("1" .. "9999").
_SHARD = re.compile(r"[1-9][0-9]{0,3}")


def parse_feed_name(name: str) -> tuple[str, str]:
    """``"okx@2"`` -> ``("okx", "2")``; ``"okx"`` -> ``("okx", "")``."""
    exchange, sep, shard = name.partition("@")
    if sep and not _SHARD.fullmatch(shard):
        raise ConfigError(f"shard of {name!r} must be a number from 1 to 9999")
    return exchange, shard


def deal(symbols: list[str], shards: int) -> list[list[str]]:
    """``symbols`` dealt round-robin into ``shards`` non-empty lists."""
    if not 1 <= shards <= len(symbols):
        raise ConfigError(f"cannot split {len(symbols)} symbols into {shards} shards")
    return [symbols[i::shards] for i in range(shards)]


def plan_feeds(wanted: dict[str, list[str]], processes: int) -> dict[str, list[str]]:
    """The feeds for ``processes`` processes: ``wanted`` itself, or with its
    busiest exchanges split into shards when processes outnumber feeds.

    ``wanted`` maps feed names (``okx``, or ``okx@1`` for a shard the spec
    named) to symbols. Shards are added one at a time to the exchange with
    the most symbols per shard, so two processes and one exchange give two
    shards, and four processes with exchanges of 100, 10 and 10 symbols give
    the first two. Feeds the specs already split are left as they are.
    """
    shards = {name: 1 for name in wanted}
    while sum(shards.values()) < processes:
        splittable = [name for name, symbols in wanted.items()
                      if "@" not in name and len(symbols) > shards[name]]
        if not splittable:
            break
        busiest = max(splittable, key=lambda name: len(wanted[name]) / shards[name])
        shards[busiest] += 1
    planned: dict[str, list[str]] = {}
    for name, symbols in wanted.items():
        if shards[name] == 1:
            planned[name] = symbols
            continue
        for index, part in enumerate(deal(symbols, shards[name]), start=1):
            planned[feed_name(name, str(index))] = part
    return planned


def check_disjoint(wanted: dict[str, list[str]]) -> None:
    """Two feeds of one exchange must not share a symbol (its rows would be stored twice)."""
    owner: dict[tuple[str, str], str] = {}
    for name, symbols in wanted.items():
        exchange, _ = parse_feed_name(name)
        for symbol in symbols:
            other = owner.setdefault((exchange, symbol), name)
            if other != name:
                raise ConfigError(f"{symbol} of {exchange} is in both {other} and {name}")
    whole = {parse_feed_name(name)[0] for name in wanted if "@" not in name}
    for name in wanted:
        exchange, shard = parse_feed_name(name)
        if shard and exchange in whole:
            raise ConfigError(f"{exchange} is configured both whole and as shard {name}")


def check_layout(settings: Settings, names: list[str]) -> None:
    """Refuse a layout that leaves behind a journal with records PostgreSQL lacks.

    Looks at the journals of the configured exchanges that no configured feed
    owns (``okx`` when ``okx@1`` and ``okx@2`` run, or the reverse) and
    compares each one's last record with its checkpoint.
    """
    root = _journal_root(settings)
    exchanges = {parse_feed_name(name)[0] for name in names}
    others = [path for path in sorted(root.iterdir()) if path.is_dir() and path.name not in names
              and path.name.partition("@")[0] in exchanges] if root.is_dir() else []
    if not others:
        return
    checkpoints = _checkpoints(settings)
    unfinished = [path.name for path in others if last_seq(path) > checkpoints.get(path.name, 0)]
    if unfinished:
        raise ConfigError(
            f"the journal of {', '.join(unfinished)} holds records that are not stored yet "
            "(the streamer stopped before it stored them); start once with the feeds named so "
            "(exchange:SYMBOLS for a whole exchange, exchange@N:SYMBOLS for shard N, or the same "
            "--processes as before) to store them, then change the layout"
        )


def _journal_root(settings: Settings) -> Path:
    from .app import journal_root  # the app owns where journals live

    return journal_root(settings)


def _checkpoints(settings: Settings) -> dict[str, int]:
    with psycopg.connect(settings.db.url(), autocommit=True) as conn:
        try:
            return {stream: seq for stream, seq in conn.execute(read_checkpoints_sql(settings.db.schema)).fetchall()}
        except psycopg.errors.UndefinedTable:
            return {}  # no streamer has stored anything in this schema yet
