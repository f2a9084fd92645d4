"""Chat messages of a request -> the plain dicts a chat template renders."""

from __future__ import annotations

from typing import Any

from ...engine.text.messages import template_message
from ...errors import InvalidRequestError
from ..core.limits import check_json_depth
from ..core.tool_calls import new_tool_call_id
from .types.chat import ChatMessage, ToolCallIn, ToolDefinition


def _tool_call(call: ToolCallIn) -> dict[str, Any]:
    return {
        "id": call.id or new_tool_call_id(),
        "type": "function",
        "function": {"name": call.function.name, "arguments": call.function.arguments},
    }


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The conversation as chat templates expect it (flattened as ``engine.chat`` flattens it)."""
    if not messages:
        raise InvalidRequestError("'messages' must contain at least one message.", param="messages")
    out = []
    for i, message in enumerate(messages):
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
        item = template_message(item, i)
        for j, call in enumerate(item.get("tool_calls") or ()):
            check_json_depth(call["function"]["arguments"], f"messages[{i}].tool_calls[{j}].function.arguments")
        out.append(item)
    return out


def template_tools(tools: list[ToolDefinition]) -> list[dict[str, Any]]:
    """Tool definitions in OpenAI's shape (``{"type": "function", "function": {...}}``), which templates render."""
    out = []
    for tool in tools:
        function: dict[str, Any] = {"name": tool.function.name}
        if tool.function.description is not None:
            function["description"] = tool.function.description
        function["parameters"] = tool.function.parameters or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": function})
    return out
