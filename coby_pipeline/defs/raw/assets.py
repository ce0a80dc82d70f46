"""The raw tables the streamer writes, declared so lineage starts at the feed.

They are external assets (Dagster does not materialize them): the streamer
appends to them continuously. Descriptions and column docs come from
:mod:`streamer.contract`, the single declaration of the raw data.
"""

from __future__ import annotations

import dagster as dg

from streamer.contract import BOOK_SNAPSHOTS, BOOK_UPDATES, FEED_EVENTS, TRADES, Table

RAW_GROUP = "raw"


def raw_key(table: Table) -> dg.AssetKey:
    return dg.AssetKey(["raw", table.name])


def _column_schema(table: Table) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type=c.pg_type,
                description=c.doc or None,
                constraints=dg.TableColumnConstraints(nullable=c.nullable),
            )
            for c in table.columns
        ]
    )


def raw_table_spec(table: Table) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=raw_key(table),
        description=f"{table.doc} Written by the streamer to PostgreSQL table `{table.name}`.",
        group_name=RAW_GROUP,
        kinds={"postgres"},
        metadata={
            "dagster/column_schema": _column_schema(table),
            "dagster/table_name": table.name,
            "time_column": table.time_column or "",
        },
    )


raw_book_updates = raw_table_spec(BOOK_UPDATES)
raw_book_snapshots = raw_table_spec(BOOK_SNAPSHOTS)
raw_trades = raw_table_spec(TRADES)
raw_feed_events = raw_table_spec(FEED_EVENTS)
