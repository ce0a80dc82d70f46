"""COBY's Dagster code location (``coby``): hourly research datasets from the raw feed.

``definitions.py`` assembles the ``defs/`` folder (one sub-package per domain);
``lib/`` holds the plain data code the assets call (PostgreSQL extraction,
Parquet layout, the Polars queries, rendering), so it can be used and
benchmarked without Dagster; ``materialize.py`` runs the whole graph in-process
for given hours.
"""
