"""``POST /v1/chat/completions``: whole answers and streamed chunks, with tool calls."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from msgspec import UNSET, UnsetType

from ..engine.outputs import Delta
from ..errors import ContextLengthExceededError, InvalidRequestError
from ..runtime.cpu_pool import run_cpu
from .decoding import decode_body
from .guided import check_tool_parameters, regex_spec, response_format_spec, tool_call_spec
from .http import Request, Response
from .logprobs import chat_logprobs
from .messages import template_messages, template_tools
from .options import sampling_options
from .responses import json_response, usage_out
from .schemas import (
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
    Usage,
    chat_request_decoder,
)
from .sse import DONE, error_event, event, streaming_response
from .streams import first_items
from .tool_calls import ParsedToolCall, ToolCallParser, new_tool_call_id, parse_tool_calls

if TYPE_CHECKING:
    from ..engine.engine import Engine


@dataclass(slots=True, frozen=True)
class _ToolSettings:
    """How tool calls in the output are treated (absent when the request offers no tools)."""

    names: frozenset[str]
    parallel: bool


def _tool_settings(request: ChatCompletionRequest) -> _ToolSettings | None:
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
    return _ToolSettings(names, parallel)


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
        guided = regex_spec(request.guided_regex)
    if guided is not None:
        options["guided"] = guided
    return dict(
        model=model,
        tools=template_tools(request.tools) if offers_tools and request.tools else None,
        chat_template_kwargs=request.chat_template_kwargs,
        request_id=request_id,
        **options,
    )


def _tool_calls_out(calls: list[ParsedToolCall]) -> list[ToolCallOut]:
    return [
        ToolCallOut(id=new_tool_call_id(), function=FunctionCallOut(name=c.name, arguments=c.arguments)) for c in calls
    ]


def _chat_call(
    engine: Engine, request: Request, request_id: str
) -> tuple[ChatCompletionRequest, list[dict[str, Any]], _ToolSettings | None, str, dict[str, Any]]:
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
        return streaming_response(_events(chunks, first, stream))

    try:
        completion = await engine.chat(messages, **call)
    except ContextLengthExceededError as exc:
        raise _named_as_sent(exc, body) from None
    choices = []
    for choice in completion.choices:
        content: str | None = choice.text
        calls: list[ParsedToolCall] = []
        if tools is not None:
            content, calls = parse_tool_calls(choice.text, tools.names)
            calls = calls if tools.parallel else calls[:1]
        message = AssistantMessage(content=content, tool_calls=_tool_calls_out(calls) if calls else UNSET)
        choices.append(
            ChatChoice(
                index=choice.index,
                message=message,
                logprobs=chat_logprobs(choice.logprobs or []) if body.logprobs else None,
                finish_reason="tool_calls" if calls and choice.finish_reason == "stop" else choice.finish_reason,
            )
        )
    return json_response(
        ChatCompletion(
            id=request_id, created=int(time.time()), model=model, choices=choices, usage=usage_out(completion.usage)
        )
    )


class _ChatChunks:
    """Turns engine deltas into chat chunk events; holds the per-choice streaming state."""

    def __init__(
        self, request_id: str, created: int, model: str, include_usage: bool, logprobs: bool, tools: _ToolSettings | None
    ) -> None:
        self.request_id = request_id
        self.created = created
        self.model = model
        self.include_usage = include_usage
        # With include_usage every chunk carries "usage": null; without it the key is absent.
        self._usage_field: None | UnsetType = None if include_usage else UNSET
        self.logprobs = logprobs
        self.tools = tools
        self.usage: Usage | None = None
        self._started: set[int] = set()
        self._parsers: dict[int, ToolCallParser] = {}

    def _chunk(self, choice: ChatChunkChoice) -> bytes:
        return event(
            ChatCompletionChunk(
                id=self.request_id, created=self.created, model=self.model, choices=[choice], usage=self._usage_field
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
        calls_made = 0
        if self.tools is None:
            if delta.text or logprobs:
                parts.append(self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(content=delta.text), logprobs=logprobs)))
        else:
            parser = self._parsers.get(index) or self._parsers.setdefault(index, ToolCallParser(self.tools.names))
            before = parser.calls
            items = parser.feed(delta.text)
            if delta.finish_reason is not None:
                items += parser.finish()
            parts += self._tool_events(index, items, before, logprobs, self.tools.parallel)
            calls_made = parser.calls
        if delta.finish_reason is not None:
            reason = "tool_calls" if calls_made and delta.finish_reason == "stop" else delta.finish_reason
            parts.append(self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=reason)))
        if delta.usage is not None:
            self.usage = usage_out(delta.usage)
        return b"".join(parts)

    def _tool_events(
        self,
        index: int,
        items: list[str | ParsedToolCall],
        calls_before: int,
        logprobs: ChatLogprobs | None,
        parallel: bool,
    ) -> list[bytes]:
        parts = []
        call_index = calls_before
        for item in items:
            if isinstance(item, str):
                if item:
                    parts.append(self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(content=item), logprobs=logprobs)))
                    logprobs = None
                continue
            if call_index > 0 and not parallel:
                continue  # parallel_tool_calls=false: only the first call counts
            header = ToolCallDelta(
                index=call_index,
                id=new_tool_call_id(),
                type="function",
                function=FunctionCallDelta(name=item.name, arguments=""),
            )
            arguments = ToolCallDelta(index=call_index, function=FunctionCallDelta(arguments=item.arguments))
            parts.append(self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(tool_calls=[header]), logprobs=logprobs)))
            parts.append(self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(tool_calls=[arguments]))))
            logprobs = None
            call_index += 1
        if logprobs is not None:  # the text is held back, but its logprobs are known now
            parts.append(self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(), logprobs=logprobs)))
        return parts

    def usage_event(self) -> bytes:
        """The closing chunk with no choices and the request's usage (``stream_options.include_usage``)."""
        return event(
            ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model, choices=[], usage=self.usage)
        )


async def _events(chunks: _ChatChunks, first: Delta | None, stream: AsyncGenerator[Delta, None]) -> AsyncGenerator[bytes, None]:
    """The SSE body.  Closing it (client gone) closes the engine stream, which cancels the request."""
    try:
        if first is not None:
            if data := chunks.on_delta(first):
                yield data
        async for delta in stream:
            # Text held back (a possible stop string or tool-call marker) produces no event yet.
            if data := chunks.on_delta(delta):
                yield data
        if chunks.include_usage and chunks.usage is not None:
            yield chunks.usage_event()
    except Exception as exc:
        yield error_event(exc)
    finally:
        await stream.aclose()
    yield DONE
