"""Logging for the ``coby`` command: one stderr handler whose output never holds a secret.

Redaction happens in the formatter, after the message, its arguments, the
traceback and the stack have been rendered into the final line, so a password
is removed wherever it hides (a driver exception's conninfo, a URL in an
argument, a repr in a traceback). Uncaught exceptions, in the main thread and
in other threads, go through the same scrubbing.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from typing import TextIO

from .secrets import scrub

DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose every output goes through :func:`scrub`."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class RedactingFilter(logging.Filter):
    """Renders and scrubs a record's message in place.

    For handlers COBY does not own (a library's, a test runner's), which keep
    their own formatter: attach this filter to them. Exceptions are rendered
    and scrubbed too, because their text may hold a connection string.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


def _excepthook(exc_type, exc, tb) -> None:
    sys.stderr.write(scrub("".join(traceback.format_exception(exc_type, exc, tb))))
    sys.stderr.flush()


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    sys.stderr.write(scrub(f"Exception in thread {name}:\n{text}"))
    sys.stderr.flush()


def install_logging(*, verbose: bool = False, stream: TextIO | None = None) -> logging.Handler:
    """Route the root logger to ``stream`` (stderr) through a redacting formatter,
    replacing any handler installed before, and scrub uncaught exceptions.

    Returns the handler (tests attach to it or remove it)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(RedactingFormatter(DEFAULT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    return handler
