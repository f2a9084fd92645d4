"""Models, embeddings, tokenize, health, docs and dispatch, on a real engine."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
import struct
from pathlib import Path

import pytest

from llm_middleware.api.app import API
from llm_middleware.api.core.http import Request
from llm_middleware.api import docs
from llm_middleware.api.docs import SwaggerUIMissingError, swagger_ui_dir
from llm_middleware.engine import Engine
from llm_middleware.errors import EngineNotReadyError


async def test_models_list_and_retrieve(call_api) -> None:
    body = (await call_api("GET", "/v1/models")).json()
    assert body["object"] == "list"
    cards = {card["id"]: card for card in body["data"]}
    assert cards["tiny"]["object"] == "model" and isinstance(cards["tiny"]["created"], int)
    assert cards["tiny"]["random_weights"] is True and cards["tiny"]["owned_by"] == "llm_middleware-demo"
    assert cards["minilm"]["random_weights"] is False and cards["minilm"]["owned_by"] == "llm_middleware"
    assert cards["minilm"]["task"] == "embed"
    assert (await call_api("GET", "/v1/models/tiny")).json() == cards["tiny"]
    missing = await call_api("GET", "/v1/models/org/unknown-model")
    assert missing.status == 404
    error = missing.json()["error"]
    assert error["code"] == "model_not_found" and "tiny" in error["message"] and "minilm" in error["message"]


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


async def test_embeddings_semantics_and_encodings(call_api) -> None:
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    result = await call_api("POST", "/v1/embeddings", {"model": "minilm", "input": texts})
    assert result.status == 200, result.body
    body = result.json()
    assert body["object"] == "list" and body["model"] == "minilm"
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and all(d["object"] == "embedding" for d in body["data"])
    cat, kitten, stocks = (d["embedding"] for d in body["data"])
    assert len(cat) == 384
    assert _cosine(cat, kitten) > _cosine(cat, stocks) + 0.2
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    b64 = (await call_api("POST", "/v1/embeddings", {"model": "minilm", "input": texts[0], "encoding_format": "base64"})).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    # Alone rather than in a padded batch, the vector may differ in the last float32 bits.
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(cat, abs=1e-5)
    short = (await call_api("POST", "/v1/embeddings", {"model": "minilm", "input": texts[0], "dimensions": 8})).json()
    assert len(short["data"][0]["embedding"]) == 8


async def test_embeddings_default_to_the_embedding_model_and_reject_token_ids(call_api) -> None:
    result = await call_api("POST", "/v1/embeddings", {"input": "hello"})
    assert result.status == 200 and result.json()["model"] == "minilm"
    result = await call_api("POST", "/v1/embeddings", {"input": [[1, 2, 3]]})
    assert result.status == 400 and result.json()["error"]["param"] == "input[0]"
    result = await call_api("POST", "/v1/embeddings", {"input": "x", "encoding_format": "hex"})
    assert result.status == 400 and result.json()["error"]["param"] == "encoding_format"


async def test_tokenize_and_detokenize(call_api) -> None:
    tokens = (await call_api("POST", "/tokenize", {"prompt": "Hello world"})).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0 and tokens["max_model_len"] == 1024
    text = (await call_api("POST", "/detokenize", {"tokens": tokens["tokens"]})).json()
    assert text == {"prompt": "Hello world"}
    chat = (await call_api("POST", "/tokenize", {"messages": [{"role": "user", "content": "Hello world"}]})).json()
    assert chat["count"] > tokens["count"]  # the template adds role markers
    both = await call_api("POST", "/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]})
    assert both.status == 400
    bad = await call_api("POST", "/detokenize", {"tokens": [10**8]})
    assert bad.status == 400 and bad.json()["error"]["param"] == "tokens"


async def test_health(call_api, tiny_model_dir: Path, tmp_path: Path) -> None:
    assert (await call_api("GET", "/health")).json() == {"status": "ok"}
    request = Request("GET", "/health", "/ai", {})
    stopped = await API(Engine(tiny_model_dir)).handle(request)
    assert stopped.status == 503 and ("retry-after", "5") in stopped.headers
    broken = Engine(tmp_path / "no-such-model")
    with pytest.raises(EngineNotReadyError):
        await broken.wait_ready()
    failed = await API(broken).handle(request)
    assert failed.status == 503 and b"engine_failed" in failed.body and str(tmp_path).encode() not in failed.body


async def test_openapi_and_swagger(api, api_engine) -> None:
    response = await api.handle(Request("GET", "/openapi.json", "/shop/ai", {}))
    doc = json.loads(response.body)
    assert doc["openapi"].startswith("3.1") and doc["servers"] == [{"url": "/shop/ai"}]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/models/{model}",
            "/tokenize", "/detokenize", "/health"} <= set(doc["paths"])
    request_ref = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    name = request_ref["$ref"].rsplit("/", 1)[1]
    assert "messages" in doc["components"]["schemas"][name]["properties"]
    bare = API(api_engine, include_docs=False)
    assert (await bare.handle(Request("GET", "/docs", "/ai", {}))).status == 404


def _urls(page: bytes, tag: str, attribute: str) -> list[str]:
    """The URLs in ``attribute`` of every ``tag`` element of ``page``."""
    return [html.unescape(url) for url in re.findall(rf'<{tag} [^>]*{attribute}="([^"]+)"', page.decode())]


async def test_swagger_ui_is_served_from_the_package_unless_a_cdn_is_chosen(api, api_engine) -> None:
    page = await api.handle(Request("GET", "/docs", "/shop/ai", {}))
    assert page.status == 200 and b'url: "/shop/ai/openapi.json"' in page.body
    assets = _urls(page.body, "script", "src") + _urls(page.body, "link", "href")
    assert len(assets) == 2 and all(url.startswith("/shop/ai/docs?asset=") for url in assets)
    folder = swagger_ui_dir()
    for url in assets:
        path, query = url.split("?", 1)
        asset = await api.handle(Request("GET", path.removeprefix("/shop/ai"), "/shop/ai", {}, query.encode()))
        name = query.split("&")[0].removeprefix("asset=")
        assert asset.status == 200 and asset.body == (folder / name).read_bytes()
        assert asset.headers[0][1].startswith("text/javascript" if name.endswith(".js") else "text/css")
    unknown = await api.handle(Request("GET", "/docs", "/ai", {}, b"asset=../../etc/passwd"))
    assert unknown.status == 404 and b"passwd" not in unknown.body
    cdn = await API(api_engine, docs_cdn="https://cdn.example/swagger-ui-dist@5/").handle(Request("GET", "/docs", "/ai", {}))
    assert _urls(cdn.body, "script", "src") == ["https://cdn.example/swagger-ui-dist@5/swagger-ui-bundle.js"]
    assert _urls(cdn.body, "link", "href") == ["https://cdn.example/swagger-ui-dist@5/swagger-ui.css"]
    assert (await API(api_engine, docs_cdn="https://cdn.example").handle(
        Request("GET", "/docs", "/ai", {}, b"asset=swagger-ui.css"))).status == 404


def test_docs_without_swagger_ui_installed_say_what_to_do(api_engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docs, "_ASSET_PACKAGE", "swagger_ui_not_installed")
    with pytest.raises(SwaggerUIMissingError, match="pip install swagger-ui-py"):
        API(api_engine)
    API(api_engine, docs_cdn=docs.SWAGGER_UI_CDN)  # a CDN, or no docs, needs no package
    API(api_engine, include_docs=False)


async def test_playground_page_is_opt_in_and_self_contained(api, api_engine) -> None:
    assert (await api.handle(Request("GET", "/playground", "/ai", {}))).status == 404
    page = await API(api_engine, include_playground=True).handle(Request("GET", "/playground", '/a"<b>', {}))
    headers = dict(page.headers)
    assert page.status == 200 and headers["content-type"].startswith("text/html")
    assert b'data-root="/a&quot;&lt;b&gt;"' in page.body  # the root path is escaped into one attribute
    assert not re.search(rb"(src|href)=", page.body)  # nothing loaded from elsewhere
    policy = headers["content-security-policy"]
    script = re.search(rb"<script>(.*?)</script>", page.body, re.DOTALL).group(1)
    digest = base64.b64encode(hashlib.sha256(script).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy and "connect-src 'self'" in policy


async def test_dispatch_errors(call_api) -> None:
    missing = await call_api("GET", "/v2/whatever")
    assert missing.status == 404
    assert missing.json() == {"error": {"message": "Unknown path /v2/whatever.", "type": "invalid_request_error",
                                        "param": None, "code": "not_found"}}
    assert missing.headers["x-request-id"]
    wrong = await call_api("GET", "/v1/chat/completions")
    assert wrong.status == 405 and wrong.headers["allow"] == "POST"
    wrong = await call_api("DELETE", "/v1/models/tiny")
    assert wrong.status == 405 and wrong.headers["allow"] == "GET"
