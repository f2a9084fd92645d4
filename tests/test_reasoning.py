"""Reasoning apart from the answer, through a real server and the ``openai`` SDK: a template that opens the
reasoning and Qwen3's original one (where the model opens it), whole and streamed, ``enable_thinking``
off, a tool call after thinking, constrained output after thinking, multi-byte text inside the thinking.
Then the pieces below: the splitter on text cut anywhere, the grammar that lets the reasoning through,
and an upstream's ``reasoning_content`` through ``RemoteEngine``'s results.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import openai
import pytest
from calling_engine import CALL, PREAMBLE
from servers import Server, server_env, serving
from thinking_engine import ANSWER, THOUGHT
from transformers import AutoTokenizer

from llm_middleware.api.openai.messages import turn_messages
from llm_middleware.api.openai.types.chat import chat_request_decoder
from llm_middleware.conversation import guided
from llm_middleware.conversation.events import ChoiceDone, ReasoningDelta, TextDelta, TurnUsage
from llm_middleware.conversation.reasoning import ReasoningSplitter
from llm_middleware.conversation.stream import TurnSplitter
from llm_middleware.demo_model import build_demo_model
from llm_middleware.engine.outputs import Delta, Usage
from llm_middleware.engine.text.reasoning import ReasoningFormat
from llm_middleware.remote import results

HELLO = [{"role": "user", "content": "What is the weather?"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"unit": {"enum": ["c", "f"]}}, "required": ["unit"], "additionalProperties": False}}}
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}


@pytest.fixture(scope="module")
def thinking_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3 model with a template that opens a ``<think>`` block for the reply."""
    return build_demo_model(tmp_path_factory.mktemp("qwen3-thinking"), arch="qwen3", size="tiny", thinking=True)


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, thinking_model_dir: Path) -> Iterator[openai.OpenAI]:
    server = Server(["-m", "hypercorn", "thinking_apps:app"], env={"LLM_THINKING_MODEL": str(thinking_model_dir)})
    with serving({"thinking": server}, {**server_env(tiny_model_dir), "OMP_NUM_THREADS": "1"}) as urls:
        yield openai.OpenAI(base_url=urls["thinking"] + "/ai/v1", api_key="unused", max_retries=0, timeout=120)


def _extra(message: Any) -> dict[str, Any]:
    return message.model_extra or {}


def _streamed(client: openai.OpenAI, **body: Any) -> tuple[str, str, list[dict[str, Any]], str, list[str]]:
    """Reasoning, content, tool-call pieces and finish reason of a streamed answer, and the order of its parts."""
    reasoning, content, calls, finish, order = [], [], [], "", []
    for chunk in client.chat.completions.create(stream=True, messages=HELLO, **body):
        [choice] = chunk.choices
        extra = _extra(choice.delta)
        if extra.get("reasoning_content"):
            assert extra["reasoning"] == extra["reasoning_content"]
            reasoning.append(extra["reasoning_content"])
            order.append("reasoning")
        if choice.delta.content:
            content.append(choice.delta.content)
            order.append("content")
        for call in choice.delta.tool_calls or []:
            calls.append(call.model_dump())
            order.append("call")
        finish = choice.finish_reason or finish
    return "".join(reasoning), "".join(content), calls, finish, order


@pytest.mark.parametrize("model", ["thinker", "qwen3"])
def test_reasoning_apart_from_the_answer_whole_and_streamed(client: openai.OpenAI, model: str) -> None:
    # "thinker": the prompt opens the block; "qwen3": the model opens it itself.
    whole = client.chat.completions.create(model=model, messages=HELLO, max_tokens=200)
    [choice] = whole.choices
    assert _extra(choice.message)["reasoning_content"] == THOUGHT == _extra(choice.message)["reasoning"]
    assert choice.message.content == ANSWER and choice.finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens > len(THOUGHT.split())

    reasoning, content, calls, finish, order = _streamed(client, model=model, max_tokens=200)
    assert (reasoning, content, calls, finish) == (THOUGHT, ANSWER, [], "stop")
    assert order.index("content") > max(i for i, part in enumerate(order) if part == "reasoning")
    assert len([p for p in order if p == "reasoning"]) > 1  # streamed as it came, not at the end


@pytest.mark.parametrize("model", ["thinker", "qwen3"])
def test_thinking_switched_off(client: openai.OpenAI, model: str) -> None:
    whole = client.chat.completions.create(model=model, messages=HELLO, max_tokens=8, temperature=0,
                                           extra_body=NO_THINKING)
    [choice] = whole.choices
    assert "reasoning_content" not in _extra(choice.message) and "reasoning" not in _extra(choice.message)
    assert isinstance(choice.message.content, str) and choice.finish_reason == "length"
    reasoning, content, _, _, _ = _streamed(client, model=model, max_tokens=8, temperature=0, extra_body=NO_THINKING)
    assert reasoning == "" and content == choice.message.content  # greedy: the same tokens either way


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_after_thinking(client: openai.OpenAI, stream: bool) -> None:
    body = {"model": "thinker", "tools": [WEATHER], "max_tokens": 200}
    if stream:
        reasoning, content, pieces, finish, order = _streamed(client, **body)
        calls = [{"name": pieces[0]["function"]["name"], "arguments": pieces[1]["function"]["arguments"]}]
        assert order[-2:] == ["call", "call"]
    else:
        [choice] = client.chat.completions.create(messages=HELLO, **body).choices
        reasoning, content, finish = _extra(choice.message)["reasoning_content"], choice.message.content, choice.finish_reason
        calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in choice.message.tool_calls or []]
    assert reasoning == THOUGHT and content == PREAMBLE and finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [(CALL["name"], CALL["arguments"])]


@pytest.mark.skipif(not guided.GUIDED_SUPPORTED, reason="the engine has no constrained decoding")
def test_constrained_answer_after_thinking(client: openai.OpenAI, thinking_model_dir: Path) -> None:
    # The random model would think forever: a bias on the end marker closes its reasoning at once, and
    # the grammar then holds the answer to the schema, or to a forced call.
    end = AutoTokenizer.from_pretrained(thinking_model_dir).convert_tokens_to_ids("</think>")
    steer = {"logit_bias": {str(end): 100}, "temperature": 0, "max_tokens": 60}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": SCHEMA}}
    [choice] = client.chat.completions.create(model="thinker", messages=HELLO, response_format=fmt, **steer).choices
    assert choice.finish_reason == "stop" and set(json.loads(choice.message.content or "")) == {"ok"}
    assert "</think>" not in (choice.message.content or "")
    [choice] = client.chat.completions.create(model="thinker", messages=HELLO, tools=[WEATHER],
                                              tool_choice="required", **steer).choices
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    assert choice.message.tool_calls[0].function.name == "get_weather"


def test_history_with_reasoning_content_is_accepted(client: openai.OpenAI) -> None:
    history = [*HELLO, {"role": "assistant", "content": ANSWER, "reasoning_content": THOUGHT},
               {"role": "user", "content": "And tomorrow?"}]
    whole = client.chat.completions.create(model="thinker", messages=history, max_tokens=200)  # type: ignore[arg-type]
    assert _extra(whole.choices[0].message)["reasoning_content"] == THOUGHT


# ---- the pieces ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
def test_history_reasoning_reaches_the_template_as_reasoning_content(key: str) -> None:
    body = msgspec.json.encode({"messages": [*HELLO, {"role": "assistant", "content": ANSWER, key: THOUGHT}]})
    messages = turn_messages(chat_request_decoder.decode(body).messages)
    assert messages[1]["reasoning_content"] == THOUGHT and "reasoning" not in messages[1]


OPENED = ReasoningFormat("<think>", "</think>", "reasoning")
EITHER = ReasoningFormat("<think>", "</think>", "either")
OUTPUT = "\n" + THOUGHT + "\n</think>\n\n" + ANSWER


def _split(fmt: ReasoningFormat | None, pieces: list[str]) -> tuple[str, str]:
    splitter = ReasoningSplitter(fmt)
    parts = [p for k, text in enumerate(pieces) for p in splitter.feed(text, last=k == len(pieces) - 1)]
    assert [part for part, _ in parts] == sorted((part for part, _ in parts), reverse=True)  # reasoning first
    return "".join(t for p, t in parts if p == "reasoning"), "".join(t for p, t in parts if p == "answer")


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(OUTPUT)])
def test_splitter_on_text_cut_anywhere(size: int) -> None:
    cut = [OUTPUT[i:i + size] for i in range(0, len(OUTPUT), size)]
    assert _split(OPENED, cut) == (THOUGHT + "\n", ANSWER)
    assert _split(EITHER, ["<think>" + p if k == 0 else p for k, p in enumerate(cut)]) == (THOUGHT + "\n", ANSWER)
    plain = [ANSWER[i:i + size] for i in range(0, len(ANSWER), size)]
    assert _split(EITHER, plain) == ("", ANSWER)
    assert _split(None, cut) == ("", OUTPUT)
    assert _split(ReasoningFormat("<think>", "</think>", "answer"), cut) == ("", OUTPUT)


def test_unclosed_reasoning_stays_reasoning() -> None:
    assert _split(OPENED, ["thinking and ", "then </thi"]) == ("thinking and then </thi", "")
    assert _split(EITHER, ["<thi"]) == ("", "<thi")


def test_turn_events_of_a_thinking_choice() -> None:
    splitter = TurnSplitter(None, OPENED)
    events = splitter.on_delta(Delta(0, THOUGHT + "</think>", [1]))
    events += splitter.on_delta(Delta(0, "\n\n" + ANSWER, [2], finish_reason="stop", usage=Usage(3, 2)))
    assert events == [ReasoningDelta(0, THOUGHT), TextDelta(0, ANSWER), ChoiceDone(0, "stop"), TurnUsage(3, 2)]


@pytest.mark.skipif(not guided.GUIDED_SUPPORTED, reason="the engine has no constrained decoding")
def test_grammar_lets_the_reasoning_through(thinking_model_dir: Path) -> None:
    import llguidance
    import llguidance.hf
    from llguidance import LLMatcher

    tokenizer = AutoTokenizer.from_pretrained(thinking_model_dir)

    def accepts(spec: dict[str, Any], text: str) -> bool:
        [(kind, value)] = spec.items()
        grammar = LLMatcher.grammar_from_lark(value) if kind == "lark" else LLMatcher.grammar_from_json_schema(value)
        matcher = llguidance.LLMatcher(llguidance.hf.from_tokenizer(tokenizer), grammar)
        return matcher.consume_tokens(tokenizer.encode(text, add_special_tokens=False)) and matcher.is_accepting()

    spec = guided.after_reasoning(guided.json_schema_spec(SCHEMA, "response_format"), OPENED, "response_format")
    assert accepts(spec, THOUGHT + '</think>\n\n{"ok":true}') and accepts(spec, '</think>{"ok":false}')
    assert not accepts(spec, '{"ok":true}')  # the reasoning must end before the answer
    assert not accepts(spec, THOUGHT + "</think>\n\nno")
    regex = guided.after_reasoning(guided.regex_spec("a/b+", "guided_regex"), OPENED, "guided_regex")
    assert accepts(regex, "x</think>a/bb") and not accepts(regex, "x</think>ab")
    calls = guided.after_reasoning(guided.tool_call_spec([("f", None)], several=False), OPENED, "tool_choice")
    assert accepts(calls, 'x</think>\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>')
    # Where the model may open a block itself, or an upstream keeps the reasoning apart, the grammar is as it was.
    plain = guided.json_schema_spec(SCHEMA, "response_format")
    assert guided.after_reasoning(plain, EITHER, "response_format") == plain
    upstream = ReasoningFormat("<think>", "</think>", "reasoning", marker_tokens=False, grammar_sees_reasoning=False)
    assert guided.after_reasoning(plain, upstream, "response_format") == plain


def test_upstream_reasoning_comes_back_as_the_same_events() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "Hmm: 東"}}]},
        {"choices": [{"index": 0, "delta": {"reasoning": "京."}}]},
        {"choices": [{"index": 0, "delta": {"content": "Done"}}]},
        {"choices": [{"index": 0, "delta": {"content": "."}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 4, "completion_tokens": 5}},
    ]
    fmt = ReasoningFormat("<think>", "</think>", "either", marker_tokens=False, grammar_sees_reasoning=False)
    deltas, splitter = results.ChatDeltas(), TurnSplitter(None, fmt)
    events = [e for chunk in chunks for delta in deltas.feed(chunk) for e in splitter.on_delta(delta)]
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "Hmm: 東京."
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Done."
    assert events[-2:] == [ChoiceDone(0, "stop"), TurnUsage(4, 5)]

    answer = {"choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": "Done.", "reasoning_content": "Hmm."}}]}
    [choice] = results.chat_completion(answer, "r1", "m").choices
    events = TurnSplitter(None, fmt).on_delta(Delta(0, choice.text, [], finish_reason="stop"))
    assert events == [ReasoningDelta(0, "Hmm."), TextDelta(0, "Done."), ChoiceDone(0, "stop")]
