"""An OpenAPI 3 document of the VNC REST API, generated from the schema."""

from __future__ import annotations

from typing import Any

from tungsten import __version__
from tungsten.model.schema import Schema


def openapi_document(schema: Schema, server_url: str) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "Tungsten VNC config API", "version": __version__},
        "servers": [{"url": server_url}],
        "paths": {},
    }
