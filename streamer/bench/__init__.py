"""Benchmark suites behind ``coby bench <suite>``: each measures, none asserts.

Results are one JSON object per figure (see ``bench/README.md`` and
``BENCHMARKS.md`` at the top of the repository).
"""
