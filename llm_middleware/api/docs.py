"""``GET /openapi.json`` (generated from the body Structs) and ``GET /docs`` (Swagger UI).

Swagger UI's files come from the ``swagger-ui-py`` package, so the page works where no CDN can
be reached; they are served by the ``/docs`` route itself (``/docs?asset=swagger-ui.css``), so
the page and its files share one path and one access rule.  A CDN is used only when asked for.
"""

from __future__ import annotations

import html
import importlib.util
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import msgspec

from ..errors import LLMError
from ..runtime.cpu_pool import run_cpu
from .core.http import Request, Response
from .core.responses import json_response
from .core.routing import Handler, NotFoundError, Route

#: Swagger UI on a public CDN, for ``docs_cdn=`` (pages then load it from there, not from this server).
SWAGGER_UI_CDN = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5"

# The files of Swagger UI the page loads, and their content types.
_ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8"}
_ASSET_PACKAGE, _ASSET_DISTRIBUTION = "swagger_ui", "swagger-ui-py"

_REF = "#/components/schemas/{name}"


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def openapi_document(routes: list[Route], *, title: str, version: str, error_type: type) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``, whose errors have the body ``error_type``, without
    ``servers`` (those depend on the request)."""
    types = [error_type]
    for route in routes:
        bodies = (route.request_type, route.response_type, route.stream_type, route.error_type)
        types += [t for t in bodies if t is not None]
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
                "schema": {"type": "string", "description": route.stream_format},
                "x-chunk-schema": schema_of[route.stream_type],
            }
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.method.lower() + route.path.replace("/", "_").rstrip("_"),
            "responses": {
                "200": {"description": "OK", "content": content},
                "default": {"description": "An error", "content": _json(schema_of[route.error_type])}
                if route.error_type is not None else error,
            },
        }
        if route.request_type is not None:
            operation["requestBody"] = {"required": True, "content": _json(schema_of[route.request_type])}
        if route.prefix and route.param_name:
            operation["parameters"] = [
                {"name": route.param_name, "in": "path", "required": True, "schema": {"type": "string"}}
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


class SwaggerUIMissingError(LLMError):
    """Swagger UI's files are not installed, and no CDN was chosen."""


def swagger_ui_dir() -> Path:
    """The folder of Swagger UI's files in the installed ``swagger-ui-py`` package (found without importing it)."""
    spec = importlib.util.find_spec(_ASSET_PACKAGE)  # importing the package would import its framework handlers
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    folder = Path(locations[0]) / "static" if locations else None
    if folder is None or not all((folder / name).is_file() for name in _ASSETS):
        raise SwaggerUIMissingError(
            "the docs page serves Swagger UI from the swagger-ui-py package, which is not installed: "
            "`pip install swagger-ui-py`, or pass docs_cdn=... to load Swagger UI from a CDN, or include_docs=False"
        )
    return folder


class SwaggerUI:
    """The ``/docs`` handler: a Swagger UI page on this API's ``openapi.json``.

    With ``cdn_url`` None the page's files are served by this handler (``?asset=NAME``), read once
    from the ``swagger-ui-py`` package; otherwise the page loads them from ``cdn_url``.
    """

    def __init__(self, cdn_url: str | None = None) -> None:
        self.cdn_url = cdn_url.rstrip("/") if cdn_url is not None else None
        self._folder = swagger_ui_dir() if cdn_url is None else None
        # The package's version marks the asset URLs, so browsers may keep the files until it changes.
        self._version = distribution_version(_ASSET_DISTRIBUTION) if cdn_url is None else ""
        self._assets: dict[str, bytes] = {}

    async def __call__(self, request: Request, request_id: str) -> Response:
        asset = parse_qs(request.query_string.decode("latin-1")).get("asset")
        if asset is None:
            return self._page(request.root_path)
        return await self._asset(asset[0])

    def _asset_url(self, root_path: str, name: str) -> str:
        if self.cdn_url is not None:
            return f"{self.cdn_url}/{name}"
        return f"{root_path}/docs?asset={name}&v={self._version}"

    def _page(self, root_path: str) -> Response:
        spec_url = html.escape(root_path + "/openapi.json", quote=True)
        css = html.escape(self._asset_url(root_path, "swagger-ui.css"), quote=True)
        js = html.escape(self._asset_url(root_path, "swagger-ui-bundle.js"), quote=True)
        # validatorUrl: null, or Swagger UI would send the document's URL to a public validator.
        page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>LLM API</title>
<link rel="stylesheet" href="{css}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{js}"></script>
<script>SwaggerUIBundle({{url: "{spec_url}", dom_id: "#swagger-ui", validatorUrl: null}});</script>
</body>
</html>
"""
        return Response(status=200, headers=[("content-type", "text/html; charset=utf-8")], body=page.encode())

    async def _asset(self, name: str) -> Response:
        if self._folder is None or name not in _ASSETS:
            raise NotFoundError("Unknown docs asset; the page names the ones it loads.")
        body = self._assets.get(name)
        if body is None:
            body = self._assets[name] = await run_cpu((self._folder / name).read_bytes)
        headers = [("content-type", _ASSETS[name]), ("cache-control", "public, max-age=86400")]
        return Response(status=200, headers=headers, body=body)


def distribution_version(name: str) -> str:
    """The installed version of the distribution ``name``, or ``"0"``."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "0"
