"""``LLMPlugin`` in process with Litestar's test client: mount, prefix boundary, lifespan order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from litestar import Litestar, get
from litestar.testing import TestClient

from llm_middleware.engine.engine import Engine
from llm_middleware.integrations.litestar import LLMPlugin
from llm_middleware.integrations.openapi import TAG_DESCRIPTION


@get("/aix")
async def aix() -> str:
    return "the app's own /aix"


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    engine = Engine(tiny_model_dir)
    yield engine
    engine.shutdown()


def test_api_is_mounted_at_a_segment_boundary(engine: Engine) -> None:
    with TestClient(Litestar([aix], plugins=[LLMPlugin(engine=engine)])) as client:
        assert client.get("/ai/v1/models").json()["object"] == "list"
        assert client.get("/aix").text == "the app's own /aix"
        assert client.get("/aiy").status_code == 404
        assert "x-request-id" not in client.get("/aiy").headers
        chat = client.post("/ai/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
        assert chat.json()["usage"]["completion_tokens"] == 3
    assert engine.state == "ready"  # given, not created: the plugin leaves it running


def test_engine_brackets_the_app_lifespan(tiny_model_dir: Path) -> None:
    plugin = LLMPlugin(model=tiny_model_dir, base_path="/llm")
    seen: dict[str, str] = {}
    app = Litestar(
        [aix],
        plugins=[plugin],
        on_startup=[lambda: seen.setdefault("startup", plugin.engine.state)],
        on_shutdown=[lambda: seen.setdefault("shutdown", plugin.engine.state)],
    )
    assert plugin.engine.state == "stopped"
    with TestClient(app) as client:
        assert client.get("/llm/v1/models").status_code == 200
    assert seen["startup"] in ("loading", "ready") and seen["shutdown"] in ("loading", "ready")
    assert plugin.engine.state == "stopped"


@dataclass
class Usage:
    """A schema of the app's own whose name the API's document uses too."""

    visits: int


@get("/usage")
async def usage() -> Usage:
    return Usage(visits=1)


def test_api_operations_join_the_apps_openapi_document(engine: Engine) -> None:
    app = Litestar([aix, usage], plugins=[LLMPlugin(engine=engine, include_in_schema=True)])
    with TestClient(app) as client:
        document = client.get("/schema/openapi.json").json()
        assert client.get("/schema/swagger").status_code == 200
    assert {"/aix", "/usage", "/ai/v1/chat/completions", "/ai/health"} <= set(document["paths"])
    assert document["paths"]["/usage"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Usage"
    }
    schemas = document["components"]["schemas"]
    assert schemas["Usage"]["properties"] == {"visits": {"type": "integer"}}  # the app's own, untouched
    # The API's own Usage is renamed, and every reference of the API's operations and schemas follows it.
    ours = json.dumps([operations for path, operations in document["paths"].items() if path.startswith("/ai/")])
    ours += json.dumps({name: schema for name, schema in schemas.items() if name != "Usage"})
    assert '"#/components/schemas/LLMUsage"' in ours and '"#/components/schemas/Usage"' not in ours
    assert "prompt_tokens" in schemas["LLMUsage"]["properties"]
    assert {"name": "LLM API", "description": TAG_DESCRIPTION} in document["tags"]
    plain = Litestar([aix], plugins=[LLMPlugin(engine=engine)])  # off by default
    with TestClient(plain) as client:
        assert not any(path.startswith("/ai/") for path in client.get("/schema/openapi.json").json()["paths"])
