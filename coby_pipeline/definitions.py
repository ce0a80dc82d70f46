"""The ``coby`` code location: everything under ``defs/``, loaded by Dagster's autoloader.

Point Dagster at it with ``workspace.yaml`` (``dagster dev -w workspace.yaml``)
or ``dg dev``; the location name is ``coby`` (``[tool.dg.project]`` in
pyproject.toml).
"""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
