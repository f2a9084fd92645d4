"""The conversation core: one internal request and one ordered event stream for every protocol.

Chat completions, the Responses API, Anthropic Messages and the server-side tool loop are adapters
over this package: they translate their request into a :class:`Turn`, :func:`prepare` it, and render
the events of :func:`stream_turn` (or the :class:`TurnAnswer` of :func:`answer_turn`) in their wire
format.  It sits between ``api/`` and ``engine/``: it imports the engine, never the API.

Public pieces, by module:

- ``turn``: ``Turn`` (messages, model, tools, tool_choice, parallel_tool_calls, output, sampling,
  chat_template_kwargs, thinking, request_id, param_names), ``ToolSpec(name, description,
  parameters, param)``, ``OutputFormat(type, schema, pattern, param)`` and ``TEXT``,
  ``prepare(engine, turn) -> PreparedTurn`` (async; its CPU work runs on the CPU pool),
  ``PreparedTurn`` (model, messages, call, tools, reasoning, logprobs), ``guided_spec``, ``check_messages``,
  ``check_tools``, ``template_tools``.
- ``events``: ``ReasoningDelta(index, text, logprobs)``, ``TextDelta(index, text, logprobs)``,
  ``ToolCallMade(index, call, logprobs)``, ``ChoiceDone(index, finish_reason)``,
  ``TurnUsage(prompt_tokens, completion_tokens, cached_tokens)`` (``total_tokens`` derived;
  ``cached_tokens`` came from the prefix cache), ``TurnEvent`` (their union).
- ``stream``: ``TurnSplitter`` (``TurnSplitter.of(prepared)``; ``on_delta(delta) -> list[TurnEvent]``),
  ``stream_turn(engine, prepared) -> TurnStream`` (async; awaits the first engine output),
  ``answer_turn(engine, prepared) -> TurnAnswer``, ``TurnAnswer(choices, usage)``,
  ``ChoiceAnswer(index, reasoning, content, tool_calls, finish_reason, logprobs)``, ``gather(events)``.
- ``answer``: ``ToolSettings``, ``ToolCall(index, id, name, arguments)``, ``ChoiceSplitter``,
  ``split_choice``, ``finish_reason``.  ``tool_calls``: the parsers.  ``reasoning``:
  ``ReasoningSplitter``.  ``guided``: grammar specs.  ``limits``: ``check_json_depth``.
"""

from __future__ import annotations

from .answer import ToolCall, ToolSettings
from .events import ChoiceDone, ReasoningDelta, TextDelta, ToolCallMade, TurnEvent, TurnUsage
from .stream import ChoiceAnswer, TurnAnswer, TurnSplitter, TurnStream, answer_turn, gather, stream_turn
from .turn import TEXT, OutputFormat, PreparedTurn, ToolSpec, Turn, prepare

__all__ = [
    "TEXT",
    "ChoiceAnswer",
    "ChoiceDone",
    "OutputFormat",
    "PreparedTurn",
    "ReasoningDelta",
    "TextDelta",
    "ToolCall",
    "ToolCallMade",
    "ToolSettings",
    "ToolSpec",
    "Turn",
    "TurnAnswer",
    "TurnEvent",
    "TurnSplitter",
    "TurnStream",
    "TurnUsage",
    "answer_turn",
    "gather",
    "prepare",
    "stream_turn",
]
