"""POST /v1/completions end to end on a real engine."""

from __future__ import annotations

GREEDY = {"temperature": 0, "ignore_eos": True}


async def test_whole_completion_with_logprobs(call_api) -> None:
    result = await call_api("POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 5, "logprobs": 2, **GREEDY})
    assert result.status == 200
    body = result.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert choice["finish_reason"] == "length"
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["text_offset"]) == 5
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"][0] == 0
    assert all(b - a == len(t) for a, b, t in zip(logprobs["text_offset"], logprobs["text_offset"][1:], logprobs["tokens"]))
    for token, lp, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"]):
        assert 1 <= len(top) <= 2 and top[token] == lp
    assert body["usage"]["completion_tokens"] == 5


async def test_token_id_prompt_equals_text_prompt(call_api) -> None:
    tokens = (await call_api("POST", "/tokenize", {"prompt": "The quick brown fox"})).json()["tokens"]
    by_text = await call_api("POST", "/v1/completions", {"prompt": "The quick brown fox", "max_tokens": 6, **GREEDY})
    by_ids = await call_api("POST", "/v1/completions", {"prompt": tokens, "max_tokens": 6, **GREEDY})
    assert by_ids.json()["choices"][0]["text"] == by_text.json()["choices"][0]["text"]
    assert by_ids.json()["usage"]["prompt_tokens"] == len(tokens)


async def test_several_prompts_and_n(call_api) -> None:
    body = {"prompt": ["Hello", "The quick"], "n": 2, "max_tokens": 3, **GREEDY}
    result = (await call_api("POST", "/v1/completions", body)).json()
    assert [c["index"] for c in result["choices"]] == [0, 1, 2, 3]
    single = (await call_api("POST", "/v1/completions", {"prompt": "The quick", "max_tokens": 3, **GREEDY})).json()
    assert result["choices"][2]["text"] == single["choices"][0]["text"]
    assert result["usage"]["completion_tokens"] == 12


async def test_echo(call_api) -> None:
    body = {"prompt": "Hello", "max_tokens": 3, "echo": True, **GREEDY}
    plain = (await call_api("POST", "/v1/completions", {**body, "echo": False})).json()["choices"][0]["text"]
    assert (await call_api("POST", "/v1/completions", body)).json()["choices"][0]["text"] == "Hello" + plain
    events = (await call_api("POST", "/v1/completions", {**body, "stream": True})).events
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "Hello" + plain


async def test_stream_of_several_prompts_with_usage(call_api) -> None:
    body = {"prompt": ["Hello", "The quick"], "max_tokens": 4, **GREEDY}
    whole = (await call_api("POST", "/v1/completions", body)).json()
    result = await call_api("POST", "/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert result.headers["content-type"] == "text/event-stream"
    *chunks, usage_chunk, done = result.events
    assert done == "[DONE]"
    assert all(c["object"] == "text_completion" and c["usage"] is None for c in chunks)
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert "".join(c["text"] for c in mine) == whole["choices"][index]["text"]
        assert mine[-1]["finish_reason"] == "length" and all(c["finish_reason"] is None for c in mine[:-1])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]


async def test_stream_logprobs_offsets_continue(call_api) -> None:
    body = {"prompt": "Hello", "max_tokens": 4, "logprobs": 1, "stream": True, **GREEDY}
    events = (await call_api("POST", "/v1/completions", body)).events[:-1]
    offsets = [o for e in events if e["choices"][0]["logprobs"] for o in e["choices"][0]["logprobs"]["text_offset"]]
    tokens = [t for e in events if e["choices"][0]["logprobs"] for t in e["choices"][0]["logprobs"]["tokens"]]
    assert len(tokens) == 4 and offsets == [sum(len(t) for t in tokens[:i]) for i in range(4)]


async def test_unsupported_and_malformed_requests(call_api) -> None:
    cases = [
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
        ({"prompt": [1.5, 2]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": {"text": "x"}}, "prompt"),
        ({"prompt": [10**9]}, "prompt"),
    ]
    for body, param in cases:
        result = await call_api("POST", "/v1/completions", body)
        assert result.status == 400, body
        assert result.json()["error"]["param"] == param, body


async def test_token_id_prompt_longer_than_the_prompt_list_cap(call_api) -> None:
    # A list of token ids is one prompt: only a list of prompts is capped at 128 entries.
    tokens = (await call_api("POST", "/tokenize", {"prompt": "The quick brown fox jumps over the lazy dog. " * 20})).json()
    ids = tokens["tokens"][:150]
    assert len(ids) == 150
    result = await call_api("POST", "/v1/completions", {"prompt": ids, "max_tokens": 2, **GREEDY})
    assert result.status == 200, result.body
    assert result.json()["usage"]["prompt_tokens"] == 150
