"""A turn of a conversation as every protocol asks for it, and what it takes to run it on an engine.

A protocol adapter translates its request body into a :class:`Turn`; :func:`prepare` checks the
turn, compiles its constrained decoding and reads the model's reasoning format, and returns the
:class:`PreparedTurn` that ``stream_turn`` and ``answer_turn`` run.  Errors name the core's fields
(``tool_choice``, ``max_tokens``, ``messages[2].content``...); ``Turn.param_names`` renames them
into the protocol's own spelling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..engine.text.messages import template_message
from ..engine.text.reasoning import ReasoningFormat
from ..errors import InvalidRequestError, LLMError
from ..runtime.cpu_pool import run_cpu
from . import guided
from .answer import ToolSettings
from .limits import check_json_depth

if TYPE_CHECKING:
    from ..engine.interface import EngineAPI

#: ``tool_choice`` values other than a tool's name.
ToolChoiceMode = Literal["auto", "none", "required"]
_MODES = ("auto", "none", "required")


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call: ``parameters`` is a JSON Schema object (None: any object).
    ``param`` is the request field holding ``parameters``, named in errors about them."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    param: str = "tools"


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """What the answer must be: free ``text``, any JSON object, JSON following ``schema``, or text
    matching the regular expression ``pattern``.  ``param`` is the request field that asked for it,
    named in errors (the schema's or the pattern's field where there is one)."""

    type: Literal["text", "json_object", "json_schema", "regex"] = "text"
    schema: dict[str, Any] | None = None
    pattern: str | None = None
    param: str = "output"


TEXT = OutputFormat()


@dataclass(slots=True)
class Turn:
    """One request for the assistant's next message, whatever protocol it came in.

    ``messages`` are dicts in OpenAI's chat shape, as chat templates take them (``role``,
    ``content`` as a string or text parts, ``tool_calls`` with ``function.arguments`` as a JSON
    string or an object, ``tool_call_id``, and an assistant's earlier ``reasoning_content``).
    ``tool_choice`` is ``"auto"``, ``"none"``, ``"required"`` or the name of one tool (the three
    words are never read as names).  ``sampling`` holds the engine's sampling keywords
    (``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop``, ``seed``, ``n``, ``logprobs``,
    ``top_logprobs``... as ``SamplingParams`` names them).  ``thinking`` switches the template's
    ``enable_thinking`` (None leaves the template's default).  ``param_names`` maps the core's
    field names to the protocol's, for the ``param`` of errors: a key replaces the start of a
    name it equals or begins (``{"max_tokens": "max_output_tokens"}``).
    """

    messages: list[dict[str, Any]]
    model: str | None = None
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: str = "auto"
    parallel_tool_calls: bool = True
    output: OutputFormat = TEXT
    sampling: dict[str, Any] = field(default_factory=dict)
    chat_template_kwargs: dict[str, Any] | None = None
    thinking: bool | None = None
    request_id: str | None = None
    param_names: Mapping[str, str] = field(default_factory=dict)

    def rename(self, exc: LLMError) -> LLMError:
        """``exc`` with its ``param`` in the protocol's spelling."""
        param = exc.param
        if param:
            for core in sorted(self.param_names, key=len, reverse=True):
                if param == core or param.startswith((core + ".", core + "[")):
                    exc.param = self.param_names[core] + param[len(core):]
                    break
        return exc


@dataclass(frozen=True, slots=True)
class PreparedTurn:
    """A checked turn: the served ``model``, the conversation ready for the template, the keyword
    arguments of ``engine.chat`` / ``engine.stream_chat`` besides the messages (``guided`` compiled),
    how tool calls are read (None: the output is not searched for calls) and how reasoning is marked
    (None: the model does not reason in marked blocks)."""

    turn: Turn
    model: str
    messages: list[dict[str, Any]]
    call: dict[str, Any]
    tools: ToolSettings | None
    reasoning: ReasoningFormat | None


def check_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` as chat templates take them (``engine.text.messages``), tool-call arguments bounded."""
    if not messages:
        raise InvalidRequestError("'messages' must contain at least one message.", param="messages")
    out = []
    for i, message in enumerate(messages):
        item = template_message(message, i)
        for j, call in enumerate(item.get("tool_calls") or ()):
            check_json_depth(call["function"]["arguments"], f"messages[{i}].tool_calls[{j}].function.arguments")
        out.append(item)
    return out


def check_tools(tools: list[ToolSpec]) -> None:
    """Reject tools whose ``parameters`` is not a valid JSON Schema (leniently: they only describe the tool)."""
    for tool in tools:
        if tool.parameters is not None:
            guided.check_schema(tool.parameters, tool.param, lenient=True)


def template_tools(tools: list[ToolSpec]) -> list[dict[str, Any]]:
    """Tools in OpenAI's shape (``{"type": "function", "function": {...}}``), which chat templates render."""
    out = []
    for tool in tools:
        function: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            function["description"] = tool.description
        function["parameters"] = tool.parameters or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": function})
    return out


def _forced(turn: Turn) -> list[ToolSpec] | None:
    """The tools a call must be made of (``required`` or a named tool), or None when no call is forced."""
    if turn.tool_choice in ("auto", "none"):
        return None
    if not turn.tools:
        # Answering with text would leave a client that forces a call without the call it waits for.
        raise InvalidRequestError(
            "'tool_choice' 'required' or a named tool needs 'tools' to choose from.", param="tool_choice"
        )
    if turn.tool_choice == "required":
        return turn.tools
    chosen = [tool for tool in turn.tools if tool.name == turn.tool_choice]
    if not chosen:
        names = ", ".join(sorted({tool.name for tool in turn.tools}))
        raise InvalidRequestError(
            f"tool_choice names tool '{turn.tool_choice}', which is not in 'tools' ({names}).",
            param="tool_choice.name",
        )
    return chosen[:1]


def _tool_settings(turn: Turn) -> ToolSettings | None:
    """How tool calls in the output are read; None when the turn offers no tools."""
    if not turn.tools or turn.tool_choice == "none":
        return None
    # A named choice means exactly one call.
    parallel = turn.parallel_tool_calls and turn.tool_choice in _MODES
    return ToolSettings(frozenset(tool.name for tool in turn.tools), parallel)


def _output_spec(output: OutputFormat) -> dict[str, Any] | None:
    """The ``guided`` spec of an output format (None for free text)."""
    if output.type == "text":
        return None
    guided.check_supported(output.param, f"'{output.param}'")
    if output.type == "regex":
        if output.pattern is None:
            raise InvalidRequestError("A regex output format needs a pattern.", param=output.param)
        return guided.regex_spec(output.pattern, output.param)
    if output.type == "json_object" or output.schema is None:
        return {"json_schema": guided.ANY_OBJECT}
    return guided.json_schema_spec(output.schema, output.param)


def guided_spec(turn: Turn, reasoning: ReasoningFormat | None = None) -> dict[str, Any] | None:
    """The ``guided`` spec the answer follows: forced tool calls, else the output format (None: free
    text).  A model that reasons first (``reasoning``) reasons freely; the grammar applies after."""
    forced = _forced(turn)
    if forced is None:
        spec, param = _output_spec(turn.output), turn.output.param
    elif turn.output.type == "regex":
        raise InvalidRequestError(
            "A regular expression output cannot be combined with a forced tool call.", param=turn.output.param
        )
    else:
        guided.check_supported("tool_choice", "tool_choice 'required' or a named tool")
        several = turn.tool_choice == "required" and turn.parallel_tool_calls
        spec = guided.tool_call_spec([(tool.name, tool.parameters) for tool in forced], several=several)
        param = "tool_choice"
    if spec is None or reasoning is None:
        return spec
    return guided.after_reasoning(spec, reasoning, param)


def _template_kwargs(turn: Turn) -> dict[str, Any] | None:
    if turn.thinking is None:
        return turn.chat_template_kwargs
    return {**(turn.chat_template_kwargs or {}), "enable_thinking": turn.thinking}


def _compile(turn: Turn, model: str, template_kwargs: dict[str, Any] | None,
             reasoning: ReasoningFormat | None) -> PreparedTurn:
    """Request-sized checks and grammar compilation, for the CPU pool."""
    messages = check_messages(turn.messages)
    check_tools(turn.tools)
    tools = _tool_settings(turn)
    call: dict[str, Any] = dict(turn.sampling)
    if (spec := guided_spec(turn, reasoning)) is not None:
        call["guided"] = spec
    call.update(
        model=model,
        tools=template_tools(turn.tools) if tools is not None else None,
        chat_template_kwargs=template_kwargs,
        request_id=turn.request_id,
    )
    return PreparedTurn(turn, model, messages, call, tools, reasoning)


async def prepare(engine: EngineAPI, turn: Turn) -> PreparedTurn:
    """Check ``turn`` and compile what running it needs (on the CPU pool); errors are
    :class:`~..errors.LLMError`\\ s whose ``param`` is spelled by ``turn.param_names``."""
    try:
        model = engine.resolve_model(turn.model, task="generate")
        template_kwargs = _template_kwargs(turn)
        reasoning = await engine.reasoning_format(model=model, chat_template_kwargs=template_kwargs)
        return await run_cpu(_compile, turn, model, template_kwargs, reasoning)
    except LLMError as exc:
        turn.rename(exc)
        raise
