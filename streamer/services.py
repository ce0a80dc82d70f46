"""Resolve the PostgreSQL and Redis to use: the configured ones, or embedded ones.

With ``DB_HOST`` / ``REDIS_HOST`` unset, real PostgreSQL and Redis servers are
started under ``COBY_DATA_DIR`` and stopped on exit; the rest of COBY runs the
same code path either way.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from .config import Settings
from .embedded import EmbeddedServices

log = logging.getLogger(__name__)


@contextlib.contextmanager
def running_services(settings: Settings) -> Iterator[Settings]:
    embedded = EmbeddedServices()
    resolved = embedded.start(settings)
    log.info("PostgreSQL: %s", resolved.db.safe_description())
    log.info("Redis: %s", resolved.redis.safe_description())
    try:
        yield resolved
    finally:
        embedded.stop()
