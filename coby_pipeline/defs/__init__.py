"""Dagster definitions of the ``coby`` code location, one sub-package per domain.

Loaded by :func:`dagster.load_from_defs_folder` (see ``coby_pipeline/definitions.py``):
every module below is imported and the Dagster objects it declares are collected.
"""
