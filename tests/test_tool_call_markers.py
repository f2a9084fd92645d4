"""Tool calls whose markers are special tokens, through a real server: streamed and whole, ``tool_choice``
auto, required and named, for a tokenizer with ``<tool_call>`` as a special token and one with it as a plain one.

Decoding with special tokens skipped drops special markers, and with them every call the model writes:
the answer came back as plain text.  The engine keeps the markers' text; other special tokens (end of
turn, role headers) still leave none.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from calling_engine import CALL, PREAMBLE
from servers import Server, server_env, serving
from transformers import AutoTokenizer

from llm_middleware.conversation import guided
from llm_middleware.demo_model import build_demo_model
from llm_middleware.engine.text.detokenizer import IncrementalDetokenizer, TokenDecoder

pytestmark = pytest.mark.skipif(not guided.GUIDED_SUPPORTED, reason="the engine has no constrained decoding")

HELLO = [{"role": "user", "content": "What is the weather?"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"unit": {"enum": ["c", "f"]}}, "required": ["unit"], "additionalProperties": False}}}
NOOP = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {},
                                                                         "additionalProperties": False}}}
CHOICES = {"auto": "auto", "required": "required", "named": {"type": "function", "function": {"name": "get_weather"}}}
MARKERS = ("<tool_call>", "</tool_call>")


@pytest.fixture(scope="module")
def plain_markers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3 model with its tool-call and thinking markers as plain added tokens."""
    return build_demo_model(tmp_path_factory.mktemp("qwen3-plain-markers"), arch="qwen3", size="tiny",
                            special_markers=False)


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir: Path, plain_markers_dir: Path) -> dict[str, Path]:
    dirs = {"special": tiny_model_dir, "plain": plain_markers_dir}
    for kind, path in dirs.items():
        tokenizer = AutoTokenizer.from_pretrained(path)
        ids = tokenizer.convert_tokens_to_ids(list(MARKERS))
        assert all(i != tokenizer.unk_token_id and i is not None for i in ids)  # one token each
        assert all((i in tokenizer.all_special_ids) == (kind == "special") for i in ids)
    return dirs


@pytest.fixture(scope="module")
def urls(model_dirs: dict[str, Path]) -> Iterator[dict[str, str]]:
    """A server per tokenizer, whose model writes a call on its own when offered tools (``calling_engine``)."""
    servers = {kind: Server(["-m", "hypercorn", "tool_call_apps:app"], env={"LLM_MODEL": str(path)})
               for kind, path in model_dirs.items()}
    with serving(servers, {**server_env(model_dirs["special"]), "OMP_NUM_THREADS": "1"}) as started:
        yield started


def _answer(url: str, body: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]], str, list[str]]:
    """Content, tool calls (name and arguments), finish reason and logprob tokens of one chat answer."""
    with httpx.Client(base_url=url, timeout=120) as client:
        if not body.get("stream"):
            response = client.post("/ai/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            choice = response.json()["choices"][0]
            calls = [c["function"] for c in choice["message"].get("tool_calls") or []]
            tokens = [entry["token"] for entry in choice["logprobs"]["content"]]
            return choice["message"]["content"], calls, choice["finish_reason"], tokens
        with client.stream("POST", "/ai/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    choices = [json.loads(line)["choices"][0] for line in lines[:-1]]
    content = "".join(c["delta"].get("content") or "" for c in choices)
    calls: dict[int, dict[str, str]] = {}
    for c in choices:
        for delta in c["delta"].get("tool_calls") or []:
            call = calls.setdefault(delta["index"], {"name": "", "arguments": ""})
            call["name"] += delta["function"].get("name") or ""
            call["arguments"] += delta["function"].get("arguments") or ""
    tokens = [entry["token"] for c in choices if c.get("logprobs") for entry in c["logprobs"]["content"]]
    return content or None, list(calls.values()), choices[-1]["finish_reason"], tokens


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("choice", list(CHOICES))
@pytest.mark.parametrize("markers", ["special", "plain"])
def test_tool_calls_are_found_whether_their_markers_are_special_or_not(urls: dict[str, str], markers: str,
                                                                       choice: str, stream: bool) -> None:
    body = {"messages": HELLO, "tools": [WEATHER, NOOP], "tool_choice": CHOICES[choice], "parallel_tool_calls": False,
            "max_tokens": 60, "temperature": 0, "logprobs": True, "stream": stream}
    content, calls, finish_reason, tokens = _answer(urls[markers], body)
    assert finish_reason == "tool_calls"
    [call] = calls
    arguments = json.loads(call["arguments"])
    if choice == "auto":
        assert content == PREAMBLE and call["name"] == CALL["name"] and arguments == CALL["arguments"]
    else:
        assert content is None
        assert call["name"] == "get_weather" if choice == "named" else call["name"] in ("get_weather", "noop")
        assert set(arguments) <= {"unit"} and arguments.get("unit", "c") in ("c", "f")
    # Each marker was written as its one token, not spelled out in pieces.
    assert all(tokens.count(marker) == 1 for marker in MARKERS), tokens


@pytest.mark.parametrize("rust_backend", [True, False])
def test_special_markers_keep_their_text_and_other_special_tokens_leave_none(tiny_model_dir: Path,
                                                                             rust_backend: bool) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    decoder = TokenDecoder(tokenizer if rust_backend else _PythonTokenizer(tokenizer))
    text = 'Sure.<tool_call>\n{"name": "f", "arguments": {"city": "東京"}}\n</tool_call><think>é</think>'
    ids = tokenizer.encode("<|im_start|>" + text + "<|im_end|><|endoftext|>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.replace("<tool_call>", "").replace(
        "</tool_call>", "").replace("<think>", "").replace("</think>", "")  # what skipping special tokens loses
    detok = IncrementalDetokenizer(decoder, tokenizer.encode("Hi", add_special_tokens=False), [])
    chunks = []
    for token in ids:
        detok.add(token)
        chunks.append(detok.take(final=False))
    assert "".join(chunks) + detok.take(final=True) == text == decoder.decode(ids)


class _PythonTokenizer:
    """A tokenizer seen without its Rust backend (as a slow tokenizer is)."""

    def __init__(self, tokenizer: Any) -> None:
        self.decode = tokenizer.decode
        self.convert_ids_to_tokens = tokenizer.convert_ids_to_tokens
        self.all_special_ids = tokenizer.all_special_ids
        self.added_tokens_decoder = tokenizer.added_tokens_decoder
