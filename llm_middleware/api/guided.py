"""Grammar specs for constrained decoding: ``response_format`` and forced tool calls.

The API hands the engine a ``guided`` sampling option, ``{"json_schema": {...}}`` or
``{"lark": "..."}``, and the engine masks tokens so the output follows it.  Engines whose
sampling parameters have no ``guided`` field cannot constrain output, and requests that need
it are refused with a clear 400 rather than answered with unconstrained text.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from ..engine.sampling_params import SamplingParams
from ..errors import InvalidRequestError
from .limits import check_json_depth
from .schemas import NamedToolChoice, ResponseFormat, ToolDefinition
from .tool_calls import HERMES_END, HERMES_START

#: Whether the engine's sampler takes a grammar (``SamplingParams.guided``).
GUIDED_SUPPORTED = "guided" in {f.name for f in fields(SamplingParams)}

_ANY_OBJECT: dict[str, Any] = {"type": "object"}

# Calls are written the way Hermes templates render them (`{"name": "f", "arguments": {...}}`), with no
# other whitespace: free whitespace lets a weak model wander through blank space instead of answering.
_CALL_LAYOUT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


def _unsupported(param: str, what: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{what} needs constrained decoding, which this server's engine does not provide yet.",
        param=param,
        code="unsupported_parameter",
    )


def _check_grammar(grammar: str, param: str) -> None:
    """Reject a grammar or schema that the grammar library cannot compile."""
    from llguidance import LLMatcher

    problem = LLMatcher.validate_grammar(grammar)
    if problem:
        raise InvalidRequestError(f"Invalid schema for '{param}': {problem}", param=param)


def _check_schema(schema: dict[str, Any], param: str, *, lenient: bool = False) -> None:
    """Reject a JSON Schema that is malformed; unless ``lenient``, also one using keywords that
    constrained decoding does not implement."""
    from llguidance import LLMatcher

    check_json_depth(schema, param)
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, defaults={"lenient": True} if lenient else None)
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(f"Invalid schema for '{param}': {exc}", param=param) from None
    _check_grammar(grammar, param)


def check_tool_parameters(tools: list[ToolDefinition]) -> None:
    """Reject tools whose ``parameters`` is not a valid JSON Schema.

    Lenient: schemas that only describe tools to the model may use keywords that constrained
    decoding does not implement (``not``, ``if``); a forced call compiles them strictly.
    """
    for i, tool in enumerate(tools):
        if tool.function.parameters is not None:
            _check_schema(tool.function.parameters, f"tools[{i}].function.parameters", lenient=True)


def regex_spec(pattern: str) -> dict[str, Any]:
    """The ``guided`` spec for vLLM's ``guided_regex`` extension: the output must match ``pattern``."""
    if not GUIDED_SUPPORTED:
        raise _unsupported("guided_regex", "guided_regex")
    from llguidance import LLMatcher

    problem = LLMatcher.validate_grammar(LLMatcher.grammar_from_regex(pattern))
    if problem:
        raise InvalidRequestError(f"Invalid regular expression in 'guided_regex': {problem}", param="guided_regex")
    return {"regex": pattern}


def response_format_spec(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    """The ``guided`` spec for a ``response_format`` (None for plain text)."""
    if response_format is None or response_format.type == "text":
        return None
    if not GUIDED_SUPPORTED:
        raise _unsupported("response_format", f"response_format '{response_format.type}'")
    if response_format.type == "json_object":
        return {"json_schema": _ANY_OBJECT}
    if response_format.json_schema is None:
        raise InvalidRequestError(
            "response_format of type 'json_schema' needs a 'json_schema' object.", param="response_format.json_schema"
        )
    schema = response_format.json_schema.schema or _ANY_OBJECT
    _check_schema(schema, "response_format.json_schema.schema")
    return {"json_schema": schema}


def _call_schema(tool: ToolDefinition) -> dict[str, Any]:
    """The JSON a call of ``tool`` must be: its name, then arguments following its parameters."""
    return {
        "x-guidance": _CALL_LAYOUT,
        "type": "object",
        "properties": {
            "name": {"const": tool.function.name},
            "arguments": tool.function.parameters or _ANY_OBJECT,
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def tool_call_spec(
    tools: list[ToolDefinition], choice: NamedToolChoice | str, parallel: bool
) -> dict[str, Any] | None:
    """The ``guided`` spec forcing Hermes-style tool calls for ``tool_choice`` required or named.

    The grammar names ``<tool_call>`` and ``</tool_call>`` as tokens of the model's vocabulary
    (special or plain added tokens: llguidance treats both as special ones, whose text it would
    not match), so the engine compiles it with the model's tokenizer.

    ``auto`` and ``none`` need no grammar (None).  Named: exactly one call of that function.
    Required: one call of any offered tool, or several when ``parallel``.
    """
    if not isinstance(choice, NamedToolChoice) and choice != "required":
        return None
    if not GUIDED_SUPPORTED:
        raise _unsupported("tool_choice", "tool_choice 'required' or a named function")
    chosen = tools if choice == "required" else [t for t in tools if t.function.name == choice.function.name]
    alternatives = [f"fn{i}" for i in range(len(chosen))]
    lines = [
        "start: call" + (' ("\\n" call)*' if parallel and choice == "required" else ""),
        # The markers are single tokens in Hermes-style vocabularies (Qwen, Hermes): referenced as tokens.
        f'call: {HERMES_START} "\\n" ({" | ".join(alternatives)}) "\\n" {HERMES_END}',
    ]
    lines += [f"{name}: %json {json.dumps(_call_schema(tool))}" for name, tool in zip(alternatives, chosen)]
    grammar = "\n".join(lines) + "\n"
    from llguidance import LLMatcher

    _check_grammar(LLMatcher.grammar_from_lark(grammar), "tools")
    return {"lark": grammar}
