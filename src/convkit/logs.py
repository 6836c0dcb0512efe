"""Logs: JSON (or text) lines on stderr, and a per-request and per-job log context.

Fields bound with :func:`log_context` (``request_id``, ``job_id``, ``user_id``, ``template``)
are added to every record logged inside it, by :class:`ContextFilter`, in the API's request
threads and the workers' job threads alike. The context is a :class:`contextvars.ContextVar`, so
it follows the code through ``run_in_threadpool`` and never leaks between requests.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

__all__ = [
    "ContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "bind",
    "configure_logging",
    "current_context",
    "log_context",
]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "convkit_log_context", default=_EMPTY
)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every record logged inside the ``with`` block (None values are left
    out); the previous context is restored on exit, whatever :func:`bind` added meanwhile."""
    token = _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind(**fields: Any) -> None:
    """Add ``fields`` to the current context until the enclosing :func:`log_context` ends
    (the tenant, once a request is authenticated). Outside any :func:`log_context` it does
    nothing, so a library call never leaves fields behind in its caller's thread."""
    current = _CONTEXT.get()
    if current is _EMPTY:
        return
    _CONTEXT.set({**current, **{k: v for k, v in fields.items() if v is not None}})


def current_context() -> dict[str, Any]:
    """The fields bound now (a copy)."""
    return dict(_CONTEXT.get())


class ContextFilter(logging.Filter):
    """Copies the current log context onto each record; a field passed with ``extra=`` wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _CONTEXT.get().items():
            if key not in record.__dict__:
                setattr(record, key, value)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON; fields passed with ``extra=`` become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger> <message> key=value ...``: for a person reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{_timestamp(record)} {record.levelname} {record.name} {record.getMessage()}"
        line = f"{line} {fields}" if fields else line
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def configure_logging(
    level: str | None = None,
    *,
    json_format: bool | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Send every log (convkit's and the server's) to stderr with the log context.

    ``level`` and ``json_format`` default to ``LOG_LEVEL`` and ``LOG_FORMAT`` read from
    ``environ`` (default ``os.environ``); a bad value raises ConfigError naming the variable.
    """
    from convkit.settings import CORE_SETTINGS

    env = os.environ if environ is None else environ
    declared = {s.env: s for s in CORE_SETTINGS}
    if level is None:
        level = str(declared["LOG_LEVEL"].read(env))
    if json_format is None:
        json_format = declared["LOG_FORMAT"].read(env) == "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic narrates every migration step at INFO; keep the log about jobs.
    logging.getLogger("alembic").setLevel(logging.WARNING)
