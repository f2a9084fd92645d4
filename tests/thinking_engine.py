"""An engine whose model thinks before it answers, for the reasoning tests (served by ``thinking_apps``).

A random-weight model never closes a reasoning block it was given, so here the engine steers it with
a grammar wherever a request constrains nothing itself: where the prompt leaves the model inside an
open ``<think>`` block it writes :data:`THOUGHT` and ``</think>``; where the template lets the model
open a block itself, it opens one first.  Then it answers :data:`ANSWER`, or, offered tools, writes
:data:`PREAMBLE` and a Hermes call of :data:`CALL`.  Everything after the model's choice of tokens is
the real path.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from calling_engine import CALL, PREAMBLE

from llm_middleware.engine import Engine
from llm_middleware.engine.outputs import Delta

#: Multi-byte characters span several tokens of the demo tokenizer.
THOUGHT = "Hmm: café, 東京 🚀 — the user wants weather."
ANSWER = "Done."


def _text(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


class ThinkingEngine(Engine):
    """An engine whose model reasons (:data:`THOUGHT`), then answers or calls a tool."""

    async def _steered(self, options: dict[str, Any]) -> dict[str, Any]:
        if options.get("guided") is not None:
            return options
        fmt = await self.reasoning_format(model=options.get("model"),
                                          chat_template_kwargs=options.get("chat_template_kwargs"))
        if fmt is None or fmt.begins == "answer":
            return options
        opening = "" if fmt.begins == "reasoning" else "<think> "
        if options.get("tools"):
            answer = f'{_text(PREAMBLE)} <tool_call> {_text(chr(10) + json.dumps(CALL) + chr(10))} </tool_call>'
        else:
            answer = _text(ANSWER)
        return {**options, "guided": {"lark": f'start: {opening}{_text(THOUGHT)} </think> "\\n\\n" {answer}\n'}}

    async def chat(self, messages: list[dict[str, Any]], **options: Any) -> Any:
        return await super().chat(messages, **await self._steered(options))

    async def stream_chat(self, messages: list[dict[str, Any]], **options: Any) -> AsyncIterator[Delta]:
        deltas = super().stream_chat(messages, **await self._steered(options))
        try:
            async for delta in deltas:
                yield delta
        finally:
            await deltas.aclose()  # type: ignore[attr-defined]
