"""A conversation's messages as chat templates take them: one string of content, decoded tool-call arguments.

Every caller's messages pass here, the HTTP API's and ``engine.chat``'s alike, so the same
conversation renders the same prompt whichever way it came in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ...errors import InvalidRequestError

#: Between the text parts of one message: separate parts read as separate paragraphs.
PART_SEPARATOR = "\n"


def template_message(message: Mapping[str, Any], index: int) -> dict[str, Any]:
    """``message`` (OpenAI-style, the ``index``-th of its conversation) ready for a chat template.

    Text parts are joined into one string, ``developer`` becomes ``system``, and tool-call arguments
    given as JSON strings are decoded (templates render them as objects).  Content may be missing
    only from an assistant message that calls tools.
    """
    out = dict(message)
    role = out.get("role")
    if role == "developer":
        out["role"] = "system"
    content = message_text(out.get("content"), index)
    calls = out.get("tool_calls")
    if content is None and not (role == "assistant" and calls):
        raise InvalidRequestError(f"Messages with role '{role}' need 'content'.", param=f"messages[{index}].content")
    out["content"] = content or ""
    if calls:
        out["tool_calls"] = [_template_call(call, index, j) for j, call in enumerate(calls)]
    return out


def message_text(content: Any, index: int) -> str | None:
    """A message's content as one string: a string as it is, text parts (``{"type": "text", "text": ...}``)
    joined by :data:`PART_SEPARATOR`; any other part is refused with an error naming it."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError("'content' must be a string or a list of content parts.",
                                  param=f"messages[{index}].content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind != "text":
            raise InvalidRequestError(
                f"Content parts of type '{kind}' are not supported; this server takes text only.",
                param=f"messages[{index}].content[{j}].type",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequestError("A text content part needs 'text'.", param=f"messages[{index}].content[{j}].text")
        texts.append(text)
    return PART_SEPARATOR.join(texts)


def decode_arguments(arguments: Any, param: str) -> Any:
    """Tool-call ``arguments`` as an object: a JSON string decoded (an empty one is ``{}``), anything else as it is."""
    if not isinstance(arguments, str):
        return arguments
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except (ValueError, RecursionError):
        raise InvalidRequestError("Tool call arguments must be a JSON object string.", param=param) from None


def _template_call(call: Mapping[str, Any], index: int, position: int) -> dict[str, Any]:
    out = dict(call)
    function = dict(out.get("function") or {})
    if "arguments" in function:
        param = f"messages[{index}].tool_calls[{position}].function.arguments"
        function["arguments"] = decode_arguments(function["arguments"], param)
    out["function"] = function
    return out
