"""Credentials: where they come from, and keeping them out of every message.

Sources, highest precedence first (per secret):

1. the variable itself (``DB_PASSWORD``, ``REDIS_PASSWORD``, ``REDIS_URL``);
2. ``<NAME>_FILE`` (``DB_PASSWORD_FILE``...): the whole file is the value, one
   trailing newline stripped (the Docker/Kubernetes secrets convention);
3. ``COBY_SECRETS_FILE``: ``KEY=VALUE`` lines; blank lines and ``#`` comments
   are ignored, only the keys in :data:`SECRET_KEYS` are accepted.

Setting both a variable and its ``_FILE`` twin is an error (which one was
meant cannot be guessed). Error messages name the variable or the file and
line, never the value.

Every secret :func:`streamer.config.load_settings` resolves is registered here,
and :func:`scrub` removes registered secrets (raw and URL-encoded) plus
anything shaped like a credential (``user:password@`` in a URL,
``password=...`` in a libpq conninfo) from a text. The log formatter
(:mod:`streamer.logging_setup`) and the sinks' error reporting use it, because
driver errors may quote the connection string they failed with.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Iterable, Mapping
from urllib.parse import quote

from .errors import ConfigError

#: The only keys a secrets file may hold (and the only variables with a ``_FILE`` twin).
SECRET_KEYS: tuple[str, ...] = ("DB_PASSWORD", "REDIS_PASSWORD", "REDIS_URL")

#: What a redacted value is replaced with.
REDACTED = "***"

#: Secrets shorter than this are only redacted where they appear in a
#: credential-shaped context: replacing every "ab" in every log line would
#: destroy the logs and still not hide a password that weak.
MIN_LITERAL_LENGTH = 4

_KEY_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")
# ``scheme://user:password@`` (the password part may hold anything but whitespace).
_URL_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<secret>[^\s]*?)@(?=[^@\s]*(?:\s|$))")
# libpq conninfo / URL query ``password=...`` (quoted or bare; ``sslpassword`` too).
_KEYWORD_VALUE = re.compile(r"(?P<head>\b(?:ssl)?password\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)


# ---------------------------------------------------------------------------
# Reading secrets
# ---------------------------------------------------------------------------


def _read_text(variable: str, path: Path) -> str:
    """The UTF-8 text of the file ``variable`` names; a ConfigError saying why not."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{variable} names a file that does not exist: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{variable} must name a file, {path} is a directory") from None
    except PermissionError:
        raise ConfigError(f"{variable} names a file this process cannot read: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{variable} names a file that is not UTF-8 text: {path}") from None
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path} ({type(exc).__name__})") from None


def read_secret_file(variable: str, path_text: str) -> str:
    """The content of the file ``variable`` names, without its trailing newline."""
    path = Path(path_text).expanduser()
    data = _read_text(variable, path)
    if data.endswith("\r\n"):
        data = data[:-2]
    elif data.endswith("\n"):
        data = data[:-1]
    if data == "":
        raise ConfigError(f"{variable} names an empty file: {path}")
    if "\n" in data or "\r" in data:
        raise ConfigError(f"{variable}: {path} must hold one line (the secret), it holds several")
    return data


def parse_secrets_file(path_text: str, *, variable: str = "COBY_SECRETS_FILE") -> dict[str, str]:
    """``KEY=VALUE`` lines of a secrets file. Values may be wrapped in matching
    single or double quotes; nothing else is interpreted (no escapes, no
    variable expansion). Unknown or repeated keys are errors."""
    path = Path(path_text).expanduser()
    text = _read_text(variable, path)
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _KEY_LINE.match(stripped)
        if match is None:
            # The line itself may be a secret pasted without its key: do not echo it.
            raise ConfigError(f"{variable}: {path} line {number} must look like KEY=VALUE")
        key, value = match.group(1), match.group(2).strip()
        if key not in SECRET_KEYS:
            raise ConfigError(
                f"{variable}: {path} line {number}: unknown key {key!r} (accepted: {', '.join(SECRET_KEYS)})"
            )
        if key in values:
            raise ConfigError(f"{variable}: {path} line {number}: {key} is set twice")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if value == "":
            raise ConfigError(f"{variable}: {path} line {number}: {key} is empty")
        values[key] = value
    return values


def resolve_secrets(env: Mapping[str, str]) -> dict[str, str | None]:
    """Every key of :data:`SECRET_KEYS` with its value from the highest-precedence
    source that sets it (``None`` when none does)."""
    from_file: dict[str, str] = {}
    secrets_file = (env.get("COBY_SECRETS_FILE") or "").strip()
    if secrets_file:
        from_file = parse_secrets_file(secrets_file)
    resolved: dict[str, str | None] = {}
    for key in SECRET_KEYS:
        direct = env.get(key)
        direct = direct.strip() if direct is not None and direct.strip() else None
        file_variable = f"{key}_FILE"
        file_path = (env.get(file_variable) or "").strip() or None
        if direct is not None and file_path is not None:
            raise ConfigError(f"set either {key} or {file_variable}, not both")
        if direct is not None:
            resolved[key] = direct
        elif file_path is not None:
            resolved[key] = read_secret_file(file_variable, file_path).strip()
        else:
            resolved[key] = from_file.get(key)
    return resolved


# ---------------------------------------------------------------------------
# Redaction
# ---------------------------------------------------------------------------

_lock = threading.Lock()
_registered: frozenset[str] = frozenset()


def register_secret(value: str | None) -> None:
    """Redact ``value`` (and its URL-encoded form) from everything :func:`scrub`
    sees from now on. Process-wide: a secret, once loaded, stays secret."""
    global _registered
    if not value or len(value) < MIN_LITERAL_LENGTH:
        return
    forms = {value, quote(value, safe=""), quote(value, safe="/")}
    with _lock:
        _registered = _registered | forms


def registered_secrets() -> frozenset[str]:
    return _registered


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` without credentials: registered secrets, ``secrets``, URL
    userinfo passwords and ``password=`` values are replaced by ``***``."""
    if not text:
        return text
    literals = set(_registered)
    for value in secrets:
        if value and len(value) >= MIN_LITERAL_LENGTH:
            literals.update((value, quote(value, safe="")))
    # Longest first, so a secret that contains another is removed whole.
    for value in sorted(literals, key=len, reverse=True):
        if value in text:
            text = text.replace(value, REDACTED)
    text = _URL_USERINFO.sub(lambda m: f"{m.group('head')}:{REDACTED}@", text)
    text = _KEYWORD_VALUE.sub(lambda m: f"{m.group('head')}{REDACTED}", text)
    return text


def describe_error(exc: BaseException, *, limit: int = 300) -> str:
    """``Type: first line of the message``, scrubbed and bounded: what sinks keep
    as ``last_error`` and put in log lines."""
    text = f"{type(exc).__name__}: {exc}"
    first_line = text.splitlines()[0] if text else type(exc).__name__
    return scrub(first_line)[:limit]
