"""The node's OpenAPI document with every ``$ref`` resolvable.

The chat, prompt and feedback bodies are parsed by hand (for OpenAI-shaped errors and the
chunked-body limit), so their schemas enter the document through ``openapi_extra`` as
pydantic JSON Schemas whose nested models sit in ``$defs``; OpenAPI tools (schemathesis,
client generators) resolve ``$ref`` against ``components.schemas``, so they are moved there.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi


def lift_defs(doc: dict[str, Any]) -> dict[str, Any]:
    """Move every inline ``$defs`` into ``components.schemas``, in place; returns ``doc``."""
    comps = doc.setdefault("components", {}).setdefault("schemas", {})

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for name, schema in (node.pop("$defs", None) or {}).items():
                comps.setdefault(name, schema)
                walk(schema)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc.get("paths", {}))
    return doc


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = lift_defs(get_openapi(title=app.title, version=app.version,
                                                       description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
