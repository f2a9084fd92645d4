"""Chat messages of a request -> the plain dicts a chat template renders."""

from __future__ import annotations

import json
from typing import Any

from ...errors import InvalidRequestError
from ..core.limits import check_json_depth
from ..core.tool_calls import new_tool_call_id
from .types.chat import ChatMessage, ContentPart, ToolCallIn, ToolDefinition

# Text parts are joined by a newline: separate parts read as separate paragraphs.
_PART_SEPARATOR = "\n"


def _text(content: str | list[ContentPart] | None, i: int) -> str | None:
    if content is None or isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type != "text":
            raise InvalidRequestError(
                f"Content parts of type '{part.type}' are not supported; this server takes text only.",
                param=f"messages[{i}].content[{j}].type",
            )
        if part.text is None:
            raise InvalidRequestError("A text content part needs 'text'.", param=f"messages[{i}].content[{j}].text")
        texts.append(part.text)
    return _PART_SEPARATOR.join(texts)


def _tool_call(call: ToolCallIn, i: int, j: int) -> dict[str, Any]:
    arguments = call.function.arguments
    param = f"messages[{i}].tool_calls[{j}].function.arguments"
    if isinstance(arguments, str):
        # Templates render arguments as a JSON object, so they get the decoded dict.
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            raise InvalidRequestError("Tool call arguments must be a JSON object string.", param=param) from None
    check_json_depth(arguments, param)
    return {
        "id": call.id or new_tool_call_id(),
        "type": "function",
        "function": {"name": call.function.name, "arguments": arguments},
    }


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The conversation as chat templates expect it; ``developer`` messages count as ``system``."""
    if not messages:
        raise InvalidRequestError("'messages' must contain at least one message.", param="messages")
    out = []
    for i, message in enumerate(messages):
        content = _text(message.content, i)
        if content is None and not (message.role == "assistant" and message.tool_calls):
            raise InvalidRequestError(
                f"Messages with role '{message.role}' need 'content'.", param=f"messages[{i}].content"
            )
        item: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role, "content": content or ""}
        if message.name is not None:
            item["name"] = message.name
        if message.tool_calls:
            item["tool_calls"] = [_tool_call(call, i, j) for j, call in enumerate(message.tool_calls)]
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
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
