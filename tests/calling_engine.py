"""An engine whose model calls a tool on its own, for ``tool_choice: "auto"`` (served by ``tool_call_apps``).

A random-weight model never writes a tool call unasked, so here the engine steers it with a grammar
wherever a request offers tools and constrains nothing itself: the model writes a sentence, then a
Hermes call (``<tool_call>`` and ``</tool_call>`` as the tokens of its vocabulary), exactly as a real
model deciding to call a tool would.  Everything after the model's choice of tokens is the real path.
"""

from __future__ import annotations

import json
from typing import Any

from llm_middleware.engine import Engine

PREAMBLE = "Let me check."
CALL = {"name": "get_weather", "arguments": {"unit": "c"}}
# The markers as tokens of the vocabulary (<...>), the rest as text.
GRAMMAR = f"start: {json.dumps(PREAMBLE)} <tool_call> {json.dumps(chr(10) + json.dumps(CALL) + chr(10))} </tool_call>\n"


def _steered(options: dict[str, Any]) -> dict[str, Any]:
    if options.get("tools") and options.get("guided") is None:
        return {**options, "guided": {"lark": GRAMMAR}}
    return options


class CallingEngine(Engine):
    """An engine whose model writes :data:`CALL` after :data:`PREAMBLE` when offered tools."""

    async def chat(self, messages: list[dict[str, Any]], **options: Any) -> Any:
        return await super().chat(messages, **_steered(options))

    def stream_chat(self, messages: list[dict[str, Any]], **options: Any) -> Any:
        return super().stream_chat(messages, **_steered(options))
