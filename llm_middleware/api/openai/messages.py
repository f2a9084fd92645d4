"""OpenAI chat messages and tools -> the conversation core's messages (plain dicts) and tool specs."""

from __future__ import annotations

from typing import Any

from ...conversation.tool_calls import new_tool_call_id
from ...conversation.turn import ToolSpec
from .types.chat import ChatMessage, ToolCallIn, ToolDefinition


def _tool_call(call: ToolCallIn) -> dict[str, Any]:
    return {
        "id": call.id or new_tool_call_id(),
        "type": "function",
        "function": {"name": call.function.name, "arguments": call.function.arguments},
    }


def turn_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The conversation as dicts in OpenAI's chat shape (checked and flattened by the core)."""
    out = []
    for message in messages:
        content = message.content
        item: dict[str, Any] = {
            "role": message.role,
            "content": [{"type": p.type, "text": p.text} for p in content] if isinstance(content, list) else content,
        }
        if message.name is not None:
            item["name"] = message.name
        if message.tool_calls:
            item["tool_calls"] = [_tool_call(call) for call in message.tool_calls]
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        reasoning = message.reasoning_content if message.reasoning_content is not None else message.reasoning
        if reasoning is not None:
            item["reasoning_content"] = reasoning
        out.append(item)
    return out


def tool_specs(tools: list[ToolDefinition] | None) -> list[ToolSpec]:
    """``tools`` as the core's tool specs."""
    return [
        ToolSpec(t.function.name, t.function.description, t.function.parameters, f"tools[{i}].function.parameters")
        for i, t in enumerate(tools or ())
    ]
