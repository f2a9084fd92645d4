"""Grammar specs for constrained decoding: JSON Schemas, regular expressions and forced tool calls.

The API hands the engine a ``guided`` sampling option, ``{"json_schema": {...}}``,
``{"regex": "..."}`` or ``{"lark": "..."}``, and the engine masks tokens so the output follows it.
Every spec is checked here (schemas and grammars compiled once), so a bad one is a 400 naming the
request field (``param``) before the engine sees it.  Engines whose sampling parameters have no
``guided`` field cannot constrain output, and requests that need it are refused with a clear 400
rather than answered with unconstrained text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from ..engine.sampling_params import SamplingParams
from ..errors import InvalidRequestError
from ..markers import HERMES_END, HERMES_START
from .limits import check_json_depth

#: Whether the engine's sampler takes a grammar (``SamplingParams.guided``).
GUIDED_SUPPORTED = "guided" in {f.name for f in fields(SamplingParams)}

ANY_OBJECT: dict[str, Any] = {"type": "object"}

# Calls are written the way Hermes templates render them (`{"name": "f", "arguments": {...}}`), with no
# other whitespace: free whitespace lets a weak model wander through blank space instead of answering.
_CALL_LAYOUT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


def check_supported(param: str, what: str) -> None:
    """Refuse ``what`` (a request field asking for constrained output) when the engine cannot constrain."""
    if not GUIDED_SUPPORTED:
        raise InvalidRequestError(
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


def check_schema(schema: dict[str, Any], param: str, *, lenient: bool = False) -> None:
    """Reject a JSON Schema that is malformed; unless ``lenient``, also one using keywords that
    constrained decoding does not implement.  Schemas that only describe tools to the model are
    checked leniently: they may use keywords such as ``not`` or ``if``."""
    from llguidance import LLMatcher

    check_json_depth(schema, param)
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, defaults={"lenient": True} if lenient else None)
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(f"Invalid schema for '{param}': {exc}", param=param) from None
    _check_grammar(grammar, param)


def json_schema_spec(schema: dict[str, Any], param: str) -> dict[str, Any]:
    """The ``guided`` spec for output that follows ``schema`` (the request field ``param``)."""
    check_schema(schema, param)
    return {"json_schema": schema}


def regex_spec(pattern: str, param: str) -> dict[str, Any]:
    """The ``guided`` spec for output that matches ``pattern`` (the request field ``param``)."""
    check_supported(param, param)
    from llguidance import LLMatcher

    problem = LLMatcher.validate_grammar(LLMatcher.grammar_from_regex(pattern))
    if problem:
        raise InvalidRequestError(f"Invalid regular expression in '{param}': {problem}", param=param)
    return {"regex": pattern}


def _call_schema(name: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON a call of the tool ``name`` must be: its name, then arguments following its parameters."""
    return {
        "x-guidance": _CALL_LAYOUT,
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": parameters or ANY_OBJECT},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def tool_call_spec(tools: Sequence[tuple[str, dict[str, Any] | None]], *, several: bool) -> dict[str, Any]:
    """The ``guided`` spec forcing Hermes-style calls of ``tools`` (each a name and its parameters'
    JSON Schema): one call of any of them, or several (one a line) when ``several``.

    The grammar names ``<tool_call>`` and ``</tool_call>`` as tokens of the model's vocabulary
    (special or plain added tokens: llguidance treats both as special ones, whose text it would
    not match), so the engine compiles it with the model's tokenizer.
    """
    alternatives = [f"fn{i}" for i in range(len(tools))]
    lines = [
        "start: call" + (' ("\\n" call)*' if several else ""),
        # The markers are single tokens in Hermes-style vocabularies (Qwen, Hermes): referenced as tokens.
        f'call: {HERMES_START} "\\n" ({" | ".join(alternatives)}) "\\n" {HERMES_END}',
    ]
    lines += [
        f"{alt}: %json {json.dumps(_call_schema(name, parameters))}"
        for alt, (name, parameters) in zip(alternatives, tools)
    ]
    grammar = "\n".join(lines) + "\n"
    from llguidance import LLMatcher

    _check_grammar(LLMatcher.grammar_from_lark(grammar), "tools")
    return {"lark": grammar}
