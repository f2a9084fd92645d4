"""OpenAI's fields that constrain the output (``response_format``, a forced ``tool_choice``, and
vLLM's ``guided_regex``) as the core's grammar specs."""

from __future__ import annotations

from typing import Any

from ...errors import InvalidRequestError
from ..core.guided import ANY_OBJECT, check_schema, check_supported, json_schema_spec, regex_spec
from ..core.guided import tool_call_spec as forced_calls_spec
from .types.chat import NamedToolChoice, ResponseFormat, ToolDefinition


def check_tool_parameters(tools: list[ToolDefinition]) -> None:
    """Reject tools whose ``parameters`` is not a valid JSON Schema (leniently: see :func:`check_schema`)."""
    for i, tool in enumerate(tools):
        if tool.function.parameters is not None:
            check_schema(tool.function.parameters, f"tools[{i}].function.parameters", lenient=True)


def guided_regex_spec(pattern: str) -> dict[str, Any]:
    """The ``guided`` spec for vLLM's ``guided_regex`` extension: the output must match ``pattern``."""
    return regex_spec(pattern, "guided_regex")


def response_format_spec(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    """The ``guided`` spec for a ``response_format`` (None for plain text)."""
    if response_format is None or response_format.type == "text":
        return None
    check_supported("response_format", f"response_format '{response_format.type}'")
    if response_format.type == "json_object":
        return {"json_schema": ANY_OBJECT}
    if response_format.json_schema is None:
        raise InvalidRequestError(
            "response_format of type 'json_schema' needs a 'json_schema' object.", param="response_format.json_schema"
        )
    return json_schema_spec(response_format.json_schema.schema or ANY_OBJECT, "response_format.json_schema.schema")


def tool_call_spec(
    tools: list[ToolDefinition], choice: NamedToolChoice | str, parallel: bool
) -> dict[str, Any] | None:
    """The ``guided`` spec for ``tool_choice`` required or named; ``auto`` and ``none`` need none.

    Named: exactly one call of that function.  Required: one call of any offered tool, or several
    when ``parallel``.
    """
    if not isinstance(choice, NamedToolChoice) and choice != "required":
        return None
    check_supported("tool_choice", "tool_choice 'required' or a named function")
    chosen = tools if choice == "required" else [t for t in tools if t.function.name == choice.function.name]
    return forced_calls_spec(
        [(tool.function.name, tool.function.parameters) for tool in chosen], several=parallel and choice == "required"
    )
