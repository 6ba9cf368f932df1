"""Helpers shared by the CLI commands: errors, logging, environment names, stop signals."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from typing import Any, NoReturn

import click


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a clear error (no traceback) and exit."""
    click.echo(f"tungsten: error: {message}", err=True)
    sys.exit(code)


def stop_on_signals() -> asyncio.Event:
    """An event that SIGINT or SIGTERM sets: a server's cue to stop cleanly (call it in the
    running event loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def env_names(name: str) -> list[str]:
    """TUNGSTEN_<NAME>, with the CONTRAIL_<NAME> alias TF operators know."""
    return [f"TUNGSTEN_{name}", f"CONTRAIL_{name}"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("path", "error"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
