"""The live database and the contract's Arrow schemas agree, column for column."""

from __future__ import annotations

import pyarrow as pa
import pytest

from streamer.contract import REPLAY_KINDS, TABLES, TYPES, RedisKeys, validate_identifier
from streamer.sinks.schema import apply_schema, default_partition_name, list_partitions


def _live_columns(conn, schema: str, table: str) -> list[tuple[str, str, bool]]:
    rows = conn.execute(
        "SELECT column_name, udt_name, is_nullable FROM information_schema.columns"
        " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (schema, table),
    ).fetchall()
    return [(name, udt, nullable == "YES") for name, udt, nullable in rows]


@pytest.fixture
def canonical_pg_types(pg_conn) -> dict[str, str]:
    """TYPES' PostgreSQL spellings resolved by the server to catalog names (timestamptz, float8...)."""
    out = {}
    for pg_type, _arrow in TYPES.values():
        out[pg_type] = pg_conn.execute("SELECT typname FROM pg_type WHERE oid = %s::regtype", (pg_type,)).fetchone()[0]
    return out


def test_every_table_matches_its_arrow_schema(settings, pg_conn, canonical_pg_types):
    apply_schema(pg_conn, settings)
    # The server's type name -> the Arrow type the contract pairs it with.
    arrow_by_udt = {canonical_pg_types[pg]: arrow for pg, arrow in TYPES.values()}
    for table in TABLES:
        live = _live_columns(pg_conn, settings.db.schema, table.name)
        schema = table.arrow_schema()
        assert [c[0] for c in live] == schema.names, table.name
        for (name, udt, nullable), field in zip(live, schema):
            assert arrow_by_udt[udt] == field.type, f"{table.name}.{name}: {udt} vs {field.type}"
            assert nullable == field.nullable, f"{table.name}.{name} nullability"
            assert udt == canonical_pg_types[table.column(name).pg_type], f"{table.name}.{name}"


def test_partitions_have_exactly_the_parent_columns(settings, pg_conn):
    apply_schema(pg_conn, settings)
    for table in TABLES:
        if not table.time_column:
            continue
        parent = _live_columns(pg_conn, settings.db.schema, table.name)
        children = [default_partition_name(table), *list_partitions(pg_conn, settings.db.schema, table).values()]
        assert len(children) >= 2
        for child in children:
            assert _live_columns(pg_conn, settings.db.schema, child) == parent, child


def test_primary_keys_are_as_declared(settings, pg_conn):
    apply_schema(pg_conn, settings)
    for table in TABLES:
        rows = pg_conn.execute(
            "SELECT a.attname FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indisprimary AND n.nspname = %s AND c.relname = %s ORDER BY array_position(i.indkey, a.attnum)",
            (settings.db.schema, table.name),
        ).fetchall()
        assert tuple(r[0] for r in rows) == table.primary_key, table.name


def test_contract_is_self_consistent():
    names = [t.name for t in TABLES]
    assert len(names) == len(set(names))
    for table in TABLES:
        validate_identifier(table.name)
        assert table.arrow_schema().names == table.column_names
        assert table.arrow_schema().metadata[b"coby.table"] == table.name.encode()
        if table.time_column:
            column = table.column(table.time_column)
            assert column.type == "timestamp" and not column.nullable
        for column in table.columns:
            assert column.type in TYPES
            validate_identifier(column.name)
    for kind, table in REPLAY_KINDS.items():
        assert kind == table.name and table in TABLES
    assert TYPES["timestamp"][1] == pa.timestamp("us", tz="UTC")


def test_arrow_schema_can_drop_hive_partition_columns():
    schema = REPLAY_KINDS["trades"].arrow_schema(drop=("exchange", "symbol"))
    assert "exchange" not in schema.names and "symbol" not in schema.names
    assert "price" in schema.names


@pytest.mark.parametrize("bad", ["Upper", "1abc", "a-b", "a b", "x" * 64, "", 'a"b'])
def test_identifiers_are_validated(bad):
    with pytest.raises(ValueError):
        validate_identifier(bad)


def test_redis_key_layout():
    keys = RedisKeys("p:")
    assert keys.book("binance", "BTC-USDT") == "p:book:binance:BTC-USDT"
    assert keys.books == "p:books"
    assert keys.trades("okx", "ETH-USDT") == "p:trades:okx:ETH-USDT"
    assert keys.status("kraken") == "p:status:kraken"
    assert keys.updates_channel == "p:updates"
