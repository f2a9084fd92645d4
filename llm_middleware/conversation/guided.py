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
import re
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from ..engine.sampling_params import SamplingParams
from ..engine.text.reasoning import ReasoningFormat
from ..errors import InvalidRequestError
from ..markers import HERMES_END, HERMES_START
from .limits import check_json_depth

#: Whether the engine's sampler takes a grammar (``SamplingParams.guided``).
GUIDED_SUPPORTED = "guided" in {f.name for f in fields(SamplingParams)}

ANY_OBJECT: dict[str, Any] = {"type": "object"}

# The answer's JSON as the engine writes a ``json_schema`` spec: compact (see ``engine.sampling.grammar``).
_COMPACT = {"whitespace_flexible": False}
# Between the reasoning's end marker and the answer: the blank lines templates put there, no more.
_GAP = r"/[ \n]{0,2}/"

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


def _lark_regex(pattern: str) -> str:
    """``pattern`` as a Lark regex literal: bare slashes and line breaks escaped, escapes kept as they are."""
    out, escaped = [], False
    for char in pattern:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            out.append(char)
            escaped = True
        elif char == "/":
            out.append("\\/")
        else:
            out.append({"\n": "\\n", "\r": "\\r"}.get(char, char))
    return "/" + "".join(out) + "/"


def _answer_rules(spec: dict[str, Any]) -> str:
    """A spec's grammar as Lark rules whose first one is ``answer``."""
    if "json_schema" in spec:
        schema = {**spec["json_schema"], "x-guidance": _COMPACT}
        return f"answer: %json {json.dumps(schema)}\n"
    if "regex" in spec:
        return f"answer: {_lark_regex(spec['regex'])}\n"
    return re.sub(r"^start:", "answer:", spec["lark"], count=1, flags=re.MULTILINE)


def after_reasoning(spec: dict[str, Any], fmt: ReasoningFormat, param: str) -> dict[str, Any]:
    """``spec`` applied to the answer only.

    Where the template opens a reasoning block (the output begins inside it), the model reasons
    freely up to the end marker and the grammar applies after it (and a blank line or two).  Where
    the template leaves it to the model whether to open a block, the constrained answer starts at
    once, as it would with thinking switched off.
    """
    if fmt.begins != "reasoning" or not fmt.grammar_sees_reasoning:
        return spec
    # Free text up to the end marker: a token the text cannot spell, or (a marker written as text)
    # the shortest text that ends with it.
    if fmt.marker_tokens:
        thought = f"thought: THOUGHT {fmt.end}\n"
    else:
        thought = f"thought[lazy]: THOUGHT {json.dumps(fmt.end)}\n"
    grammar = f"start: thought {_GAP} answer\n" + thought + "THOUGHT: /(?s:.*)/\n" + _answer_rules(spec)
    from llguidance import LLMatcher

    _check_grammar(LLMatcher.grammar_from_lark(grammar), param)
    return {"lark": grammar}
