"""structlog, configured once per process: JSON lines when stderr is not a terminal, console otherwise.

Every service calls `configure(service)` at start-up and then `get_logger()` where it logs. Events are
short snake_case names with key-value context (`request_id`, `category`, `elapsed_ms`); message bodies,
API keys and credentials are never passed to a logger.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
import structlog

__all__ = ["configure", "get_logger"]

_configured = False
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def _json_dumps(obj: Any, default: Any = None) -> str:
    # structlog's JSONRenderer always passes `default=`; msgspec wants it as `enc_hook`.
    return msgspec.json.encode(obj, enc_hook=default or str).decode()


class _Stderr:
    """Whatever `sys.stderr` is when an event is written, not when logging was configured (a
    command run in-process, as the tests do, may have replaced and closed it since)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(service: str, level: str = "info", *, json: bool | None = None) -> None:
    """Set up structlog for this process, binding `service` to every event.

    Call once, before the first event; later calls only rebind `service` (a launcher and the
    service it imports must not fight over the renderer). `json=None` picks JSON when stderr
    is not a TTY. Raises `ValueError` for an unknown `level`.
    """
    global _configured
    if level not in _LEVELS:
        raise ValueError(f"unknown log level {level!r} (use one of {', '.join(_LEVELS)})")
    structlog.contextvars.bind_contextvars(service=service)
    if _configured:
        return
    use_json = not sys.stderr.isatty() if json is None else json
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_json_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # One write per event (`print` would write the line and its newline apart).
        logger_factory=structlog.WriteLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    _configured = True


def get_logger(**context: Any) -> Any:
    """A structlog logger with `context` bound to each of its events.

    Lazy: safe to call at import time, before `configure`; the configuration in force at the
    first event is the one used.
    """
    return structlog.get_logger(**context)
