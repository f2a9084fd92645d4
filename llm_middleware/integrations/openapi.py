"""The API's operations inside a host app's own OpenAPI document (FastAPI's, Litestar's).

The operations are listed under the base path and grouped under one tag; their operation ids
get a prefix, and a schema whose name the host already uses for another schema is renamed, so
nothing of the host's document changes.
"""

from __future__ import annotations

import copy
import json
from typing import Any

#: The tag that groups the API's operations in the host's document.
TAG = "LLM API"
TAG_DESCRIPTION = "The OpenAI-compatible LLM API served by llm_middleware."
_OPERATION_ID_PREFIX = "llm_"
_RENAMED_SCHEMA_PREFIX = "LLM"
_SCHEMA_REF = "#/components/schemas/"


def operations_under(
    document: dict[str, Any], base_path: str, host_schemas: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(paths, schemas)`` of ``document`` (the API's own, paths relative to the base path) as a host's
    document lists them: the paths under ``base_path``, each operation tagged and its id prefixed, and
    each schema whose name ``host_schemas`` (the host's, as dicts) holds for a different schema renamed."""
    paths: dict[str, Any] = {}
    for path, item in document["paths"].items():
        operations = copy.deepcopy(item)
        for operation in operations.values():
            operation["tags"] = [TAG]
            operation["operationId"] = _OPERATION_ID_PREFIX + operation["operationId"]
        paths[base_path + path] = operations
    schemas = copy.deepcopy(document.get("components", {}).get("schemas", {}))
    return _renamed(paths, schemas, host_schemas or {})


def _renamed(paths: dict[str, Any], schemas: dict[str, Any], taken: dict[str, Any]) -> tuple[dict, dict]:
    """``paths`` and ``schemas`` with each schema whose name ``taken`` holds for a different schema renamed."""
    renames: dict[str, str] = {}
    for name, schema in schemas.items():
        if name in taken and taken[name] != schema:
            new = _RENAMED_SCHEMA_PREFIX + name
            while new in taken or new in schemas:
                new = _RENAMED_SCHEMA_PREFIX + new
            renames[name] = new
    if not renames:
        return paths, schemas
    # A reference is a whole JSON string, so replacing the quoted string renames exactly the references.
    text = json.dumps({"paths": paths, "schemas": schemas})
    for old, new in renames.items():
        text = text.replace(json.dumps(_SCHEMA_REF + old), json.dumps(_SCHEMA_REF + new))
    result = json.loads(text)
    return result["paths"], {renames.get(name, name): schema for name, schema in result["schemas"].items()}


def merge_openapi(host: dict[str, Any], document: dict[str, Any], base_path: str) -> dict[str, Any]:
    """A copy of the ``host`` app's OpenAPI document (as a dict) listing the API's operations too.

    ``document`` is the API's own document (``APIEndpoint.openapi()``); its paths land under ``base_path``.
    """
    merged = copy.deepcopy(host)
    host_schemas = merged.setdefault("components", {}).setdefault("schemas", {})
    paths, schemas = operations_under(document, base_path, host_schemas)
    host_schemas.update(schemas)
    for path, operations in paths.items():
        merged.setdefault("paths", {}).setdefault(path, {}).update(operations)
    tags = merged.setdefault("tags", [])
    if not any(tag.get("name") == TAG for tag in tags):
        tags.append({"name": TAG, "description": TAG_DESCRIPTION})
    return merged
