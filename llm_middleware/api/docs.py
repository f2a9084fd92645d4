"""``GET /openapi.json`` (generated from the body Structs) and ``GET /docs`` (Swagger UI)."""

from __future__ import annotations

import html
import re
from typing import Any

import msgspec

from .core.http import Request, Response
from .core.responses import json_response
from .core.routing import Handler, Route

SWAGGER_UI = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5"

_REF = "#/components/schemas/{name}"


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def openapi_document(routes: list[Route], *, title: str, version: str, error_type: type) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``, whose errors have the body ``error_type``, without
    ``servers`` (those depend on the request)."""
    types = [error_type]
    for route in routes:
        types += [t for t in (route.request_type, route.response_type, route.stream_type) if t is not None]
    types = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    schema_of = dict(zip(types, schemas))
    error = {"description": "An error", "content": _json(schema_of[error_type])}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path = route.path + "{" + route.param_name + "}" if route.prefix and route.param_name else route.path
        content: dict[str, Any] = {}
        if route.response_type is not None:
            content.update(_json(schema_of[route.response_type]))
        if route.stream_type is not None:
            content["text/event-stream"] = {
                "schema": {"type": "string", "description": route.stream_description},
                "x-chunk-schema": schema_of[route.stream_type],
            }
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.method.lower() + re.sub(r"[{}]", "", route.path).replace("/", "_").rstrip("_"),
            "responses": {"200": {"description": "OK", "content": content}, "default": error},
        }
        if route.request_type is not None:
            operation["requestBody"] = {"required": True, "content": _json(schema_of[route.request_type])}
        names = [route.param_name] if route.prefix and route.param_name else re.findall(r"\{(\w+)\}", route.path)
        if names:
            operation["parameters"] = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in names
            ]
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": components},
    }


def openapi_handler(document: dict[str, Any], base_path: str) -> Handler:
    """The ``/openapi.json`` handler; the server URL is where this request found the API
    (``base_path`` when the request does not say)."""

    async def openapi_json(request: Request, request_id: str) -> Response:
        return json_response({**document, "servers": [{"url": request.root_path or base_path or "/"}]})

    return openapi_json


async def swagger_ui(request: Request, request_id: str) -> Response:
    """An HTML page running Swagger UI (from a CDN) on this API's ``openapi.json``."""
    spec_url = html.escape(request.root_path + "/openapi.json", quote=True)
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>LLM API</title>
<link rel="stylesheet" href="{SWAGGER_UI}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{SWAGGER_UI}/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({{url: "{spec_url}", dom_id: "#swagger-ui"}});</script>
</body>
</html>
"""
    return Response(status=200, headers=[("content-type", "text/html; charset=utf-8")], body=page.encode())
