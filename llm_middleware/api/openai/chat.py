"""``POST /v1/chat/completions``: whole answers and streamed chunks, with tool calls."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from msgspec import UNSET

from ...runtime.cpu_pool import run_cpu
from ...engine import outputs
from ...engine.outputs import Delta
from ...errors import ContextLengthExceededError, InvalidRequestError
from ..core.choices import ChoiceSplitter, ToolCall, ToolSettings, finish_reason, split_choice
from ..core.decoding import decode_body
from ..core.http import Request, Response
from ..core.options import sampling_options
from ..core.responses import json_response
from ..core.sse import EventStream, event, streaming_response
from ..core.streams import first_items
from .guided import check_tool_parameters, guided_regex_spec, response_format_spec, tool_call_spec
from .logprobs import chat_logprobs
from .messages import template_messages, template_tools
from .streaming import FRAMING, StreamedAnswer
from .types.chat import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatLogprobs,
    FunctionCallDelta,
    FunctionCallOut,
    NamedToolChoice,
    ToolCallDelta,
    ToolCallOut,
    chat_request_decoder,
)
from .types.common import PromptTokensDetails, Usage

if TYPE_CHECKING:
    from ...engine.engine import Engine


def _tool_settings(request: ChatCompletionRequest) -> ToolSettings | None:
    """How tool calls in the output are treated; None when the request offers no tools."""
    forced = request.tool_choice == "required" or isinstance(request.tool_choice, NamedToolChoice)
    if forced and not request.tools:
        # Answering with text would leave a client that forces a call without the call it waits for.
        raise InvalidRequestError(
            "'tool_choice' 'required' or a named function needs 'tools' to choose from.", param="tool_choice"
        )
    if not request.tools or request.tool_choice == "none":
        return None
    names = frozenset(tool.function.name for tool in request.tools)
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise InvalidRequestError(
            f"tool_choice names function '{choice.function.name}', which is not in 'tools' "
            f"({', '.join(sorted(names))}).",
            param="tool_choice.function.name",
        )
    # A named choice means exactly one call.
    parallel = request.parallel_tool_calls is not False and not isinstance(choice, NamedToolChoice)
    return ToolSettings(names, parallel)


def _engine_call(request: ChatCompletionRequest, model: str, request_id: str) -> dict[str, Any]:
    """Keyword arguments of ``engine.chat`` / ``engine.stream_chat`` for this request."""
    if request.top_logprobs and not request.logprobs:
        raise InvalidRequestError("'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs")
    max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    options = sampling_options(request, max_tokens=max_tokens)
    if request.logprobs:
        options["logprobs"] = True
        options["top_logprobs"] = request.top_logprobs or 0
    offers_tools = bool(request.tools) and request.tool_choice != "none"
    guided = None
    if offers_tools:
        guided = tool_call_spec(request.tools or [], request.tool_choice or "auto", request.parallel_tool_calls is not False)
    if guided is None:
        guided = response_format_spec(request.response_format)
    if request.guided_regex is not None:
        if guided is not None:
            raise InvalidRequestError(
                "'guided_regex' cannot be combined with a JSON response_format or a forced tool call.",
                param="guided_regex",
            )
        guided = guided_regex_spec(request.guided_regex)
    if guided is not None:
        options["guided"] = guided
    return dict(
        model=model,
        tools=template_tools(request.tools) if offers_tools and request.tools else None,
        chat_template_kwargs=request.chat_template_kwargs,
        request_id=request_id,
        **options,
    )


def _usage(usage: outputs.Usage) -> Usage:
    """The engine's token counts as the response's ``usage`` object."""
    return Usage(
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


def _tool_calls_out(calls: list[ToolCall]) -> list[ToolCallOut]:
    return [ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments)) for c in calls]


def _chat_call(
    engine: Engine, request: Request, request_id: str
) -> tuple[ChatCompletionRequest, list[dict[str, Any]], ToolSettings | None, str, dict[str, Any]]:
    """Decode and check the body; its messages, tool settings, model and the engine call's keyword arguments
    (schemas and grammars compiled): request-sized CPU work, for the CPU pool."""
    body = decode_body(request, chat_request_decoder)
    messages = template_messages(body.messages)
    check_tool_parameters(body.tools or [])
    tools = _tool_settings(body)
    model = engine.resolve_model(body.model, task="generate")
    return body, messages, tools, model, _engine_call(body, model, request_id)


def _named_as_sent(exc: ContextLengthExceededError, body: ChatCompletionRequest) -> ContextLengthExceededError:
    """The engine names ``max_tokens``; a client that sent ``max_completion_tokens`` reads that name."""
    if exc.param == "max_tokens" and body.max_completion_tokens is not None:
        exc.param = "max_completion_tokens"
    return exc


async def chat_completions(engine: Engine, request: Request, request_id: str) -> Response:
    """Answer a chat completion request, streamed as server-sent events when ``stream`` is set."""
    body, messages, tools, model, call = await run_cpu(_chat_call, engine, request, request_id)
    if body.stream:
        stream = engine.stream_chat(messages, **call)
        try:
            [first] = await first_items([stream])
        except ContextLengthExceededError as exc:
            raise _named_as_sent(exc, body) from None
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        chunks = _ChatChunks(request_id, int(time.time()), model, include_usage, bool(body.logprobs), tools)
        return streaming_response(EventStream(stream, chunks.on_delta, FRAMING, first=first, closing=chunks.closing))

    try:
        completion = await engine.chat(messages, **call)
    except ContextLengthExceededError as exc:
        raise _named_as_sent(exc, body) from None
    choices = []
    for choice in completion.choices:
        content, calls = split_choice(choice.text, tools) if tools is not None else (choice.text, [])
        message = AssistantMessage(content=content, tool_calls=_tool_calls_out(calls) if calls else UNSET)
        choices.append(
            ChatChoice(
                index=choice.index,
                message=message,
                logprobs=chat_logprobs(choice.logprobs or []) if body.logprobs else None,
                finish_reason=finish_reason(choice.finish_reason, bool(calls)),
            )
        )
    return json_response(
        ChatCompletion(
            id=request_id, created=int(time.time()), model=model, choices=choices, usage=_usage(completion.usage)
        )
    )


@dataclass(eq=False)
class _ChatChunks(StreamedAnswer):
    """Turns engine deltas into chat chunk events; holds the per-choice streaming state."""

    logprobs: bool
    tools: ToolSettings | None
    usage: Usage | None = None
    _started: set[int] = field(default_factory=set)
    _splitters: dict[int, ChoiceSplitter] = field(default_factory=dict)

    def _chunk(self, choice: ChatChunkChoice) -> bytes:
        return event(
            ChatCompletionChunk(
                id=self.request_id, created=self.created, model=self.model, choices=[choice], usage=self.usage_field
            )
        )

    def on_delta(self, delta: Delta) -> bytes:
        """Every event one delta produces, joined."""
        index = delta.index
        parts = []
        if index not in self._started:
            self._started.add(index)
            parts.append(self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=""))))
        logprobs = chat_logprobs(delta.logprobs) if self.logprobs and delta.logprobs else None
        made_calls = False
        if self.tools is None:
            if delta.text or logprobs:
                parts.append(self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(content=delta.text), logprobs=logprobs)))
        else:
            splitter = self._splitters.get(index) or self._splitters.setdefault(index, ChoiceSplitter(self.tools))
            pieces = splitter.feed(delta.text, last=delta.finish_reason is not None)
            parts += self._split_events(index, pieces, logprobs)
            made_calls = splitter.made_calls
        if delta.finish_reason is not None:
            reason = finish_reason(delta.finish_reason, made_calls)
            parts.append(self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=reason)))
        if delta.usage is not None:
            self.usage = _usage(delta.usage)
        return b"".join(parts)

    def _split_events(self, index: int, pieces: list[str | ToolCall], logprobs: ChatLogprobs | None) -> list[bytes]:
        """Content chunks, and a tool call as two chunks: its id and name, then its arguments.  The
        delta's log-probabilities go with the first chunk."""
        parts = []
        for piece in pieces:
            if isinstance(piece, str):
                parts.append(self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(content=piece), logprobs=logprobs)))
            else:
                header = ToolCallDelta(
                    index=piece.index,
                    id=piece.id,
                    type="function",
                    function=FunctionCallDelta(name=piece.name, arguments=""),
                )
                arguments = ToolCallDelta(index=piece.index, function=FunctionCallDelta(arguments=piece.arguments))
                parts.append(self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(tool_calls=[header]), logprobs=logprobs)))
                parts.append(self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(tool_calls=[arguments]))))
            logprobs = None
        if logprobs is not None:  # the text is held back, but its logprobs are known now
            parts.append(self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(), logprobs=logprobs)))
        return parts

    def closing(self) -> bytes:
        """The closing chunk with no choices and the request's usage (``stream_options.include_usage``)."""
        if not self.include_usage or self.usage is None:
            return b""
        return event(
            ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model, choices=[], usage=self.usage)
        )
