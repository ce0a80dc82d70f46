"""Dagster-free data code behind the pipeline's assets."""
