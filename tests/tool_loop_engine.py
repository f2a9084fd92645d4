"""An engine that keeps what each generation was asked (so a test can read the prompts it rendered), and whose
model keeps calling a tool when a user asks it to "keep calling".

A random-weight model calls a tool only when forced (``tool_choice`` naming it); forcing works for the
first round alone, since later rounds are back to ``auto``.  To see ``max_tool_rounds`` bound a model that
calls in every round, this engine steers the model with a grammar to call ``count_rounds`` whenever that
tool is offered and the last user message says "keep calling".  Everything after the model's choice of
tokens is the real path.
"""

from __future__ import annotations

import copy
import json
import threading
from typing import Any

from llm_middleware.engine import Engine

KEEP_CALLING = "keep calling"
_CALL = json.dumps({"name": "count_rounds", "arguments": {}})
GRAMMAR = f"start: <tool_call> {json.dumps(chr(10) + _CALL + chr(10))} </tool_call>\n"


def _wants_calls(messages: list[dict[str, Any]], options: dict[str, Any]) -> bool:
    users = [m for m in messages if m.get("role") == "user"]
    offered = {t["function"]["name"] for t in options.get("tools") or ()}
    return bool(users) and KEEP_CALLING in str(users[-1].get("content")) and "count_rounds" in offered


class RecordingEngine(Engine):
    """Records ``(messages, tools)`` of every chat generation; steers calls as the module says."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = []
        self._lock = threading.Lock()

    def _note(self, messages: list[dict[str, Any]], options: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.asked.append((copy.deepcopy(messages), copy.deepcopy(options.get("tools"))))
        if _wants_calls(messages, options):
            return {**options, "guided": {"lark": GRAMMAR}}
        return options

    def stream_chat(self, messages: list[dict[str, Any]], **options: Any) -> Any:
        return super().stream_chat(messages, **self._note(messages, options))

    def prompts(self) -> list[str]:
        """Every recorded generation's prompt, as the chat template rendered it."""
        with self._lock:
            asked = list(self.asked)
        return [self.apply_chat_template(messages, tools=tools) for messages, tools in asked]

    def forget(self) -> None:
        with self._lock:
            self.asked.clear()
