"""A ``POST /v1/responses`` body checked and translated: tools, tool choice, output format, sampling, thinking."""

from __future__ import annotations


from typing import Any

from ...errors import InvalidRequestError
from ..core.options import sampling_options
from .types import (
    FormatOut,
    FunctionTool,
    ReasoningOut,
    ResponsesRequest,
    TextOut,
    ToolChoiceObject,
    ToolChoiceOut,
    ToolOut,
)

#: ``include`` asks for the log-probabilities of the output text with this value.
LOGPROBS_INCLUDE = "message.output_text.logprobs"
#: ``reasoning.effort`` values that turn thinking off; any other turns it on.
_NO_THINKING = frozenset({"none", "minimal"})
#: Hosted features with no counterpart here: a request that sets one is refused, naming it.
REFUSED_FIELDS = ("conversation", "prompt")


def check_request(body: ResponsesRequest) -> None:
    """Refuse what this server cannot do, naming the field (whether ``tool_choice`` names an offered
    tool, the client's or the server's, the conversation core decides)."""
    for name in REFUSED_FIELDS:
        if getattr(body, name) is not None:
            raise InvalidRequestError(
                f"'{name}' is not supported by this server.", param=name, code="unsupported_parameter"
            )
    if body.background and body.store is False:
        raise InvalidRequestError("A background response must be stored: leave 'store' true.", param="store")
    for i, tool in enumerate(body.tools or ()):
        if tool.type != "function":
            raise InvalidRequestError(
                f"Tools of type '{tool.type}' are not supported; this server serves function tools.",
                param=f"tools[{i}].type",
                code="unsupported_parameter",
            )
        if not tool.name:
            raise InvalidRequestError("A function tool needs a 'name'.", param=f"tools[{i}].name")
    names = [tool.name for tool in body.tools or ()]
    if len(set(names)) != len(names):
        raise InvalidRequestError("Tool names must be unique.", param="tools")
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceObject):
        if choice.type != "function" or not choice.name:
            raise InvalidRequestError(
                "'tool_choice' as an object must be {\"type\": \"function\", \"name\": ...}.",
                param="tool_choice", code="unsupported_parameter",
            )
    fmt = body.text.format if body.text is not None else None
    if fmt is not None and fmt.type == "json_schema" and (not fmt.name or fmt.schema is None):
        raise InvalidRequestError(
            "A 'json_schema' format needs 'name' and 'schema'.", param="text.format.schema" if fmt.name else "text.format.name"
        )


def tool_choice(body: ResponsesRequest) -> str:
    """``tool_choice`` as the turn takes it: ``auto``, ``none``, ``required`` or a tool's name."""
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceObject):
        return choice.name or "auto"
    return choice or "auto"


def wants_logprobs(body: ResponsesRequest) -> bool:
    """True when the output text's log-probabilities are asked for (``include``)."""
    return LOGPROBS_INCLUDE in (body.include or ())


def sampling(body: ResponsesRequest) -> dict[str, Any]:
    """The engine's sampling options of the request."""
    options = sampling_options(body, max_tokens=body.max_output_tokens)
    if wants_logprobs(body):
        options["logprobs"] = True
        options["top_logprobs"] = body.top_logprobs or 0
    return options


def thinking(body: ResponsesRequest) -> bool | None:
    """Whether a thinking template thinks: ``reasoning.effort`` decides; None leaves the template's default."""
    effort = body.reasoning.effort if body.reasoning is not None else None
    if effort is None:
        return None
    return effort not in _NO_THINKING


# ---- what the response echoes ---------------------------------------------------------------------


def _tool_out(tool: FunctionTool) -> ToolOut:
    return ToolOut(name=tool.name or "", parameters=tool.parameters, strict=tool.strict, description=tool.description)


def echoed(body: ResponsesRequest) -> dict[str, Any]:
    """The fields of the response object that repeat the request's."""
    fmt = body.text.format if body.text is not None and body.text.format is not None else None
    choice = body.tool_choice
    return dict(
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        previous_response_id=body.previous_response_id,
        reasoning=ReasoningOut(
            effort=body.reasoning.effort if body.reasoning else None,
            summary=body.reasoning.summary if body.reasoning else None,
        ),
        store=body.store is not False,
        background=bool(body.background),
        temperature=body.temperature,
        top_p=body.top_p,
        top_logprobs=body.top_logprobs or 0,
        text=TextOut(
            format=FormatOut(type=fmt.type, name=fmt.name, description=fmt.description, schema=fmt.schema,
                             strict=fmt.strict)
            if fmt is not None else FormatOut(type="text"),
            verbosity=(body.text.verbosity if body.text is not None else None) or "medium",
        ),
        tool_choice=ToolChoiceOut(name=choice.name or "") if isinstance(choice, ToolChoiceObject) else choice or "auto",
        tools=[_tool_out(tool) for tool in body.tools or ()],
        truncation=body.truncation or "disabled",
        user=body.user,
        metadata=body.metadata or {},
    )
