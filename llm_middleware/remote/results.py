"""OpenAI answers and stream chunks from an upstream -> the engine's ``Delta``, ``Completion``, ``Embeddings``.

Upstreams send token text, not token ids: ``token_ids`` stay empty and log-probabilities carry
``token_id=-1``.  Tool calls that an upstream parsed are written back as the Hermes text
(``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``) the embedded engine's models
write, and reasoning that an upstream split off (``reasoning_content``, or ``reasoning``) as the
``<think>`` block that opens the text, so callers of either engine read both the same way.
"""

from __future__ import annotations

import json
from typing import Any

from ..engine.outputs import Choice, Completion, Delta, Embeddings, FinishReason, TokenLogprob, TopLogprob, Usage
from ..markers import HERMES_END, HERMES_START, THINK_END, THINK_START

#: Log-probabilities from an upstream name tokens by text only.
UNKNOWN_TOKEN_ID = -1


def finish_reason(value: Any) -> FinishReason | None:
    """``length`` stays; every other reason (``stop``, ``tool_calls``, ``eos``...) is a ``stop``."""
    if value is None:
        return None
    return "length" if value == "length" else "stop"


def chat_logprobs(value: Any) -> list[TokenLogprob] | None:
    """Chat's ``logprobs: {"content": [{token, logprob, top_logprobs}]}``."""
    if not isinstance(value, dict) or not value.get("content"):
        return None
    return [
        TokenLogprob(
            UNKNOWN_TOKEN_ID, item["token"], item["logprob"],
            [TopLogprob(UNKNOWN_TOKEN_ID, top["token"], top["logprob"]) for top in item.get("top_logprobs") or []],
        )
        for item in value["content"]
    ]


def completion_logprobs(value: Any) -> list[TokenLogprob] | None:
    """Text completions' column layout: ``{tokens, token_logprobs, top_logprobs}``."""
    if not isinstance(value, dict) or not value.get("tokens"):
        return None
    tops = value.get("top_logprobs") or [None] * len(value["tokens"])
    return [
        TokenLogprob(
            UNKNOWN_TOKEN_ID, token, logprob,
            [TopLogprob(UNKNOWN_TOKEN_ID, t, lp) for t, lp in (top or {}).items()],
        )
        for token, logprob, top in zip(value["tokens"], value["token_logprobs"], tops, strict=False)
    ]


def _call_start(name: str) -> str:
    return f'{HERMES_START}\n{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": '


_CALL_END = "}\n" + HERMES_END


def tool_calls_text(calls: list[dict[str, Any]]) -> str:
    """Whole tool calls (``message.tool_calls``) as Hermes text."""
    return "\n".join(
        _call_start(call["function"]["name"]) + (call["function"].get("arguments") or "{}") + _CALL_END
        for call in calls
    )


def reasoning_of(message: dict[str, Any]) -> str:
    """The reasoning an upstream split off a message or delta (vLLM and DeepSeek name it
    ``reasoning_content``, newer servers ``reasoning``)."""
    value = message.get("reasoning_content") or message.get("reasoning")
    return value if isinstance(value, str) else ""


class _ChunkDeltas:
    """Turns a stream of chunks into deltas; subclasses read one choice's text and logprobs."""

    def __init__(self) -> None:
        self._last_index = 0

    def feed(self, chunk: dict[str, Any]) -> list[Delta]:
        """The deltas of one chunk (none for a chunk that carries nothing, like the role chunk)."""
        deltas = []
        for choice in chunk.get("choices") or []:
            index = self._last_index = int(choice.get("index") or 0)
            reason = finish_reason(choice.get("finish_reason"))
            text, logprobs = self._content(index, choice, reason)
            if text or logprobs or reason:
                deltas.append(Delta(index, text, [], logprobs, reason))
        if (counts := Usage.from_json(chunk.get("usage"))) is not None:
            deltas.append(Delta(self._last_index, "", [], usage=counts))
        return deltas

    def _content(self, index: int, choice: dict[str, Any], reason: str | None) -> tuple[str, Any]:
        raise NotImplementedError


class ChatDeltas(_ChunkDeltas):
    """Turns a stream of chat chunks into deltas (tool-call pieces become Hermes text as they come)."""

    def __init__(self) -> None:
        super().__init__()
        self._open_calls: dict[int, bool] = {}  # choice index -> whether its open call has arguments yet
        self._reasoning: dict[int, bool] = {}  # choice index -> whether its reasoning block is still open

    def _content(self, index: int, choice: dict[str, Any], reason: str | None) -> tuple[str, Any]:
        delta = choice.get("delta") or {}
        calls = delta.get("tool_calls") or []
        answer = (delta.get("content") or "") + "".join(self._call_piece(index, call) for call in calls)
        text = self._reasoning_piece(index, reasoning_of(delta), bool(answer) or reason is not None) + answer
        if reason is not None:
            text += self._close_call(index)
        return text, chat_logprobs(choice.get("logprobs"))

    def _reasoning_piece(self, index: int, reasoning: str, answer_follows: bool) -> str:
        """Reasoning as the text of a ``<think>`` block: opened before the choice's first reasoning,
        closed before its answer."""
        text = ""
        if reasoning and index not in self._reasoning:  # only a choice's first reasoning opens a block
            self._reasoning[index] = True
            text = THINK_START
        text += reasoning
        if answer_follows and self._reasoning.get(index):
            self._reasoning[index] = False
            text += THINK_END
        return text

    def _call_piece(self, index: int, call: dict[str, Any]) -> str:
        function = call.get("function") or {}
        text = ""
        if function.get("name"):  # a call's first piece names it
            text = self._close_call(index)
            text += ("\n" if text else "") + _call_start(function["name"])
            self._open_calls[index] = False
        arguments = function.get("arguments") or ""
        if arguments and index in self._open_calls:
            self._open_calls[index] = True
        return text + arguments

    def _close_call(self, index: int) -> str:
        if index not in self._open_calls:
            return ""
        had_arguments = self._open_calls.pop(index)
        return ("" if had_arguments else "{}") + _CALL_END


class CompletionDeltas(_ChunkDeltas):
    """Turns a stream of text completion chunks into deltas."""

    def _content(self, index: int, choice: dict[str, Any], reason: str | None) -> tuple[str, Any]:
        return choice.get("text") or "", completion_logprobs(choice.get("logprobs"))


def chat_completion(answer: dict[str, Any], request_id: str | None, model: str) -> Completion:
    """A whole chat answer; tool calls are appended to the content as Hermes text."""
    choices = []
    for choice in answer.get("choices") or []:
        message = choice.get("message") or {}
        parts = [message.get("content") or "", tool_calls_text(message.get("tool_calls") or [])]
        reasoning = reasoning_of(message)
        thought = THINK_START + reasoning + THINK_END if reasoning else ""
        choices.append(Choice(
            index=int(choice.get("index") or 0), text=thought + "\n".join(p for p in parts if p), token_ids=[],
            finish_reason=finish_reason(choice.get("finish_reason")) or "stop",
            logprobs=chat_logprobs(choice.get("logprobs")),
        ))
    return _completion(answer, request_id, model, choices)


def text_completion(answer: dict[str, Any], request_id: str | None, model: str) -> Completion:
    """A whole text completion answer."""
    choices = [
        Choice(
            index=int(choice.get("index") or 0), text=choice.get("text") or "", token_ids=[],
            finish_reason=finish_reason(choice.get("finish_reason")) or "stop",
            logprobs=completion_logprobs(choice.get("logprobs")),
        )
        for choice in answer.get("choices") or []
    ]
    return _completion(answer, request_id, model, choices)


def _completion(answer: dict[str, Any], request_id: str | None, model: str, choices: list[Choice]) -> Completion:
    return Completion(
        id=request_id or str(answer.get("id") or ""), model=model, choices=choices,
        usage=Usage.from_json(answer.get("usage")) or Usage(0, 0), prompt_token_ids=[],
    )


def embeddings(answer: dict[str, Any], model: str) -> Embeddings:
    """Float vectors in input order, and the prompt's token count."""
    data = sorted(answer.get("data") or [], key=lambda item: item.get("index", 0))
    counts = Usage.from_json(answer.get("usage"))
    vectors = [item["embedding"] for item in data]
    return Embeddings(model=model, vectors=vectors, prompt_tokens=counts.prompt_tokens if counts else 0)
