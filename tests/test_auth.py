"""Authentication under the base path: API keys, the host app's ``authorize``, public paths, CORS, every protocol."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from litestar import Litestar, get
from litestar.testing import TestClient
from servers import Server, server_env, serving
from test_dispatch import ShopASGI, asgi_request, shop_wsgi, wsgi_call

from llm_middleware.cli import build_parser
from llm_middleware.cli import api_keys as cli_api_keys
from llm_middleware.engine.engine import Engine
from llm_middleware.integrations.litestar import LLMPlugin
from llm_middleware.middleware import LLMMiddleware, RequestInfo
from llm_middleware.middleware.policy.auth import Authenticator
from llm_middleware.request_info import request_info

KEY = "sk-secret-1"
API_KEY, SESSION = "sk-server-key", "valid-session"
CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    engine = Engine(tiny_model_dir, max_model_len=256)
    engine.wait_ready_sync(120)
    yield engine
    engine.shutdown()


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def assert_401(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 401
    assert headers["www-authenticate"] == "Bearer"
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in error["message"]


# ---- the decision itself ------------------------------------------------------------------------


def test_keys_are_read_from_either_header_and_compared_exactly() -> None:
    auth = Authenticator(["k1", "k2"], None, ())
    assert auth.has_valid_key({"authorization": "Bearer k2"})
    assert auth.has_valid_key({"authorization": "bearer   k1 "})
    assert auth.has_valid_key({"x-api-key": "k1"})
    assert auth.has_valid_key({"authorization": "Basic abc", "x-api-key": "k2"})
    for headers in ({}, {"authorization": "Bearer k"}, {"authorization": "Bearer k1x"}, {"authorization": "k1"},
                    {"authorization": "Bearer "}, {"x-api-key": "K1"}, {"x-api-key": "ké"}):
        assert not auth.has_valid_key(headers), headers


def test_empty_keys_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="empty"):
        Authenticator(["good", " "], None, ())


async def test_either_credential_passes_and_authorize_may_be_sync_or_async() -> None:
    seen: list[RequestInfo] = []

    def sync_check(info: RequestInfo) -> bool:
        seen.append(info)
        return info.cookies.get("session") == "ok"

    async def async_check(info: RequestInfo) -> bool:
        await asyncio.sleep(0)
        return info.headers.get("x-user") == "alice"

    both = Authenticator(["k"], sync_check, ["/health"])
    assert await both.allows(request_info("POST", "/v1/models", {"x-api-key": "k"}, None))
    assert not seen  # a valid key decides without asking the host app
    assert await both.allows(request_info("GET", "/v1/models", {"cookie": "a=1; session=ok"}, ("10.0.0.1", 5)))
    assert seen[-1].method == "GET" and seen[-1].path == "/v1/models" and seen[-1].client == ("10.0.0.1", 5)
    with pytest.raises(TypeError):
        seen[-1].headers["x"] = "y"  # type: ignore[index]
    assert not await both.allows(request_info("GET", "/v1/models", {"cookie": "session=no"}, None))
    assert not await both.allows(request_info("GET", "/v1/models", {"cookie": "\x00broken"}, None))
    assert await both.allows(request_info("GET", "/health", {}, None))
    only_async = Authenticator(None, async_check, ())
    assert await only_async.allows(request_info("GET", "/health", {"x-user": "alice"}, None))
    assert not await only_async.allows(request_info("GET", "/health", {"x-user": "bob"}, None))
    # A check that forgets to return is a refusal, not a pass.
    forgetful = Authenticator(None, lambda info: None, ())  # type: ignore[arg-type,return-value]
    assert not await forgetful.allows(request_info("GET", "/", {}, None))
    assert await Authenticator(None, None, ()).allows(request_info("GET", "/v1/models", {}, None))


# ---- in process, both protocols -----------------------------------------------------------------


async def test_every_route_needs_credentials_unless_public(engine: Engine) -> None:
    mw = LLMMiddleware(ShopASGI(), engine=engine, api_keys=[KEY], public_paths=["/health", "/openapi.json"])
    for method, path in [("GET", "/ai/v1/models"), ("POST", "/ai/v1/chat/completions"), ("GET", "/ai/docs"),
                         ("GET", "/ai/metrics"), ("GET", "/ai/v1/unknown"), ("GET", "/ai")]:
        assert_401(*await asgi_request(mw, path, method=method))
    assert (await asgi_request(mw, "/ai/health"))[0] == 200
    assert (await asgi_request(mw, "/ai/openapi.json"))[0] == 200
    assert (await asgi_request(mw, "/ai/v1/models", headers=bearer(KEY)))[0] == 200
    assert (await asgi_request(mw, "/ai/metrics", headers=[("x-api-key", KEY)]))[0] == 200
    status, _, body = await asgi_request(mw, "/ai/v1/chat/completions", json=CHAT, headers=bearer(KEY))
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 2
    # The wrapped app is not ours to protect.
    assert (await asgi_request(mw, "/shop"))[0] == 201


async def test_a_failing_authorize_is_a_logged_500(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    def broken(info: RequestInfo) -> bool:
        raise ConnectionError("session store unreachable")

    mw = LLMMiddleware(ShopASGI(), engine=engine, authorize=broken)
    status, _, body = await asgi_request(mw, "/ai/v1/models")
    assert status == 500 and json.loads(body)["error"]["code"] == "internal_error"
    assert b"session store" not in body and "session store unreachable" in caplog.text


async def test_cors_preflight_needs_no_credentials_and_401_carries_cors(engine: Engine) -> None:
    mw = LLMMiddleware(ShopASGI(), engine=engine, api_keys=[KEY], allowed_origins=["https://app.example"])
    preflight = [("origin", "https://app.example"), ("access-control-request-method", "POST"),
                 ("access-control-request-headers", "authorization, content-type")]
    status, headers, _ = await asgi_request(mw, "/ai/v1/chat/completions", method="OPTIONS", headers=preflight)
    assert status == 204 and headers["access-control-allow-origin"] == "https://app.example"
    status, headers, body = await asgi_request(mw, "/ai/v1/models", headers=[("origin", "https://app.example")])
    assert_401(status, headers, body)
    assert headers["access-control-allow-origin"] == "https://app.example"


def test_wsgi_requests_are_checked_too(engine: Engine) -> None:
    mw = LLMMiddleware(shop_wsgi, engine=engine, api_keys=[KEY])
    try:
        status, headers, chunks = wsgi_call(mw, "/ai/v1/models")
        assert_401(int(status[:3]), {k.lower(): v for k, v in headers}, b"".join(chunks))
        assert wsgi_call(mw, "/ai/v1/models", headers={"x-api-key": KEY})[0].startswith("200")
        assert wsgi_call(mw, "/shop")[0].startswith("201")
    finally:
        mw.close()


def test_litestar_plugin_takes_the_same_options(engine: Engine) -> None:
    @get("/")
    async def index() -> str:
        return "litestar home"

    plugin = LLMPlugin(engine=engine, api_keys=[KEY], authorize=lambda info: info.headers.get("x-user") == "alice")
    with TestClient(Litestar(route_handlers=[index], plugins=[plugin])) as client:
        assert client.get("/").text == "litestar home"
        refused = client.get("/ai/v1/models")
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert client.get("/ai/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert client.get("/ai/v1/models", headers={"x-user": "alice"}).status_code == 200
        assert client.get("/ai/health").status_code == 200


def test_cli_keys_from_options_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    monkeypatch.setenv("LLM_MIDDLEWARE_API_KEYS", " env-1, ,env-2 ")
    assert cli_api_keys(parser.parse_args(["serve", "--demo"])) == ["env-1", "env-2"]
    args = parser.parse_args(["serve", "--demo", "--api-key", "a", "--api-key", "b", "--public-path", "/docs"])
    assert cli_api_keys(args) == ["a", "b"] and args.public_paths == ["/docs"]
    monkeypatch.delenv("LLM_MIDDLEWARE_API_KEYS")
    assert cli_api_keys(parser.parse_args(["serve", "--demo"])) is None


# ---- through a real server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured_url(tiny_model_dir: Path) -> Iterator[str]:
    server = Server(["-m", "hypercorn", "secured_apps:secured"], env={"SECURED_API_KEY": API_KEY, "SECURED_SESSION": SESSION})
    with serving({"secured": server}, server_env(tiny_model_dir)) as urls:
        yield urls["secured"]


def test_auth_through_hypercorn(secured_url: str) -> None:
    url = secured_url + "/ai/v1/chat/completions"
    refused = httpx.post(url, json=CHAT)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert httpx.post(url, json=CHAT, headers={"x-api-key": "wrong"}).status_code == 401
    assert httpx.post(url, json=CHAT, headers={"x-api-key": API_KEY}, timeout=30).status_code == 200
    assert httpx.post(url, json=CHAT, cookies={"session": SESSION}, timeout=30).status_code == 200
    assert httpx.get(secured_url + "/ai/health").status_code == 200
    assert httpx.get(secured_url + "/").text == "home"


def test_openai_sdk_sees_an_authentication_error(secured_url: str) -> None:
    def ask(key: str) -> Any:
        client = openai.OpenAI(base_url=secured_url + "/ai/v1", api_key=key, max_retries=0)
        return client.chat.completions.create(model="default", messages=CHAT["messages"], max_tokens=2)  # type: ignore[arg-type]

    with pytest.raises(openai.AuthenticationError) as info:
        ask("sk-wrong")
    assert info.value.code == "invalid_api_key"
    assert ask(API_KEY).usage.completion_tokens == 2


def test_pages_are_behind_the_keys_unless_public(engine: Engine) -> None:
    secured = LLMPlugin(engine=engine, api_keys=[KEY], include_playground=True)
    with TestClient(Litestar([], plugins=[secured])) as client:
        for page in ("/ai/playground", "/ai/docs", "/ai/openapi.json"):
            refused = client.get(page)
            assert_401(refused.status_code, dict(refused.headers), refused.content)
            assert client.get(page, headers=dict(bearer(KEY))).status_code == 200
    opened = LLMPlugin(engine=engine, api_keys=[KEY], include_playground=True, public_paths=["/playground"])
    with TestClient(Litestar([], plugins=[opened])) as client:
        assert client.get("/ai/playground").status_code == 200
        assert client.get("/ai/v1/models").status_code == 401  # what the page calls still needs the key
