"""``POST /v1/chat/completions``: the conversation core's turn as a whole answer or streamed chunks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from msgspec import UNSET

from ...conversation.answer import ToolCall
from ...conversation.events import ChoiceDone, ReasoningDelta, TextDelta, ToolCallMade, TurnUsage
from ...conversation.stream import answer_turn, stream_turn
from ...conversation.tool_loop import (
    LoopEvent,
    ToolDone,
    ToolRunning,
    answer_with_tools,
    check_rounds,
    stream_with_tools,
)
from ...conversation.turn import Turn, prepare
from ...errors import InvalidRequestError
from ...runtime.cpu_pool import run_cpu
from ...tools.toolbox import ToolBox
from ..core.server_tools import server_loop
from ..core.decoding import decode_body
from ..core.http import Request, Response
from ..core.options import sampling_options
from ..core.responses import json_response
from ..core.sse import EventStream, event, streaming_response
from .guided import output_format
from .logprobs import chat_logprobs
from .messages import tool_specs, turn_messages
from .streaming import FRAMING, StreamedAnswer
from .types.chat import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    FunctionCallDelta,
    FunctionCallOut,
    NamedToolChoice,
    ToolCallDelta,
    ToolCallOut,
    ToolProgressChunk,
    ToolProgressData,
    chat_request_decoder,
)
from .types.common import PromptTokensDetails, Usage

if TYPE_CHECKING:
    from ...engine.interface import EngineAPI


def chat_turn(body: ChatCompletionRequest, request_id: str) -> Turn:
    """The core's turn for a chat completion request."""
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequestError("'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    sampling: dict[str, Any] = sampling_options(body, max_tokens=max_tokens)
    if body.logprobs:
        sampling["logprobs"] = True
        sampling["top_logprobs"] = body.top_logprobs or 0
    choice = body.tool_choice
    names = {"tool_choice.name": "tool_choice.function.name"}
    if body.max_completion_tokens is not None:  # the core names the limit ``max_tokens``
        names["max_tokens"] = "max_completion_tokens"
    return Turn(
        messages=turn_messages(body.messages),
        model=body.model,
        tools=tool_specs(body.tools),
        tool_choice=choice.function.name if isinstance(choice, NamedToolChoice) else choice or "auto",
        parallel_tool_calls=body.parallel_tool_calls is not False,
        output=output_format(body.response_format, body.guided_regex),
        sampling=sampling,
        chat_template_kwargs=body.chat_template_kwargs,
        request_id=request_id,
        param_names=names,
    )


def _read(request: Request, request_id: str) -> tuple[ChatCompletionRequest, Turn]:
    """Decode the body and translate it: request-sized CPU work, for the CPU pool."""
    body = decode_body(request, chat_request_decoder)
    return body, chat_turn(body, request_id)


def _usage(usage: TurnUsage) -> Usage:
    return Usage(
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


def _tool_calls_out(calls: list[ToolCall]) -> list[ToolCallOut]:
    return [ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments)) for c in calls]


async def chat_completions(
    engine: EngineAPI, request: Request, request_id: str, *, tools: ToolBox | None = None
) -> Response:
    """Answer a chat completion request, streamed as server-sent events when ``stream`` is set; with the
    server's ``tools`` (if it has any to offer) through the tool loop."""
    body, turn = await run_cpu(_read, request, request_id)
    loop = await server_loop(tools, turn, request, body.max_tool_rounds)
    if loop is None and body.max_tool_rounds is not None:
        check_rounds(body.max_tool_rounds)  # bad input all the same
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    if body.stream:
        if loop is None:
            prepared = await prepare(engine, turn)
            events: AsyncIterator[LoopEvent] = await stream_turn(engine, prepared)
            model = prepared.model
        else:
            events = await stream_with_tools(engine, turn, loop)
            model = engine.resolve_model(turn.model, task="generate")
        progress = body.stream_options is not None and body.stream_options.include_tool_progress
        chunks = ChatChunks(request_id, int(time.time()), model, include_usage, bool(body.logprobs), progress)
        return streaming_response(EventStream(events, chunks.on_event, FRAMING, closing=chunks.closing))  # type: ignore[arg-type]

    if loop is None:
        prepared = await prepare(engine, turn)
        answer = await answer_turn(engine, prepared)
        model = prepared.model
    else:
        answer = await answer_with_tools(engine, turn, loop)
        model = engine.resolve_model(turn.model, task="generate")
    choices = []
    for choice in answer.choices:
        reasoning = choice.reasoning if choice.reasoning is not None else UNSET
        message = AssistantMessage(
            content=choice.content,
            reasoning_content=reasoning,
            reasoning=reasoning,
            tool_calls=_tool_calls_out(choice.tool_calls) if choice.tool_calls else UNSET,
        )
        choices.append(
            ChatChoice(
                index=choice.index,
                message=message,
                logprobs=chat_logprobs(choice.logprobs or []) if body.logprobs else None,
                finish_reason=choice.finish_reason,
            )
        )
    return json_response(
        ChatCompletion(id=request_id, created=int(time.time()), model=model, choices=choices, usage=_usage(answer.usage))
    )


@dataclass(eq=False)
class ChatChunks(StreamedAnswer):
    """Renders a turn's events as chat completion chunks."""

    logprobs: bool
    tool_progress: bool = False
    usage: Usage | None = None
    _started: set[int] = field(default_factory=set)

    def _chunk(self, choice: ChatChunkChoice) -> bytes:
        return event(
            ChatCompletionChunk(
                id=self.request_id, created=self.created, model=self.model, choices=[choice], usage=self.usage_field
            )
        )

    def on_event(self, item: LoopEvent) -> bytes:
        """The chunks of one event (a choice's first event is preceded by its role chunk)."""
        if isinstance(item, TurnUsage):
            self.usage = _usage(item)
            return b""
        if isinstance(item, ToolRunning | ToolDone):
            return self._progress(item) if self.tool_progress else b""
        index = item.index
        parts = []
        if index not in self._started:
            self._started.add(index)
            parts.append(self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=""))))
        if isinstance(item, ChoiceDone):
            parts.append(self._chunk(ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=item.finish_reason)))
            return b"".join(parts)
        logprobs = chat_logprobs(item.logprobs) if self.logprobs and item.logprobs else None
        if isinstance(item, ReasoningDelta):
            delta = ChatDelta(reasoning_content=item.text, reasoning=item.text)
        elif isinstance(item, TextDelta):
            if not item.text and logprobs is None:
                return b"".join(parts)
            delta = ChatDelta(content=item.text or UNSET)
        else:
            return b"".join(parts) + self._call_chunks(item, logprobs)
        parts.append(self._chunk(ChatChunkChoice(index=index, delta=delta, logprobs=logprobs)))
        return b"".join(parts)

    def _call_chunks(self, item: ToolCallMade, logprobs: Any) -> bytes:
        """A tool call as two chunks: its id and name, then its arguments."""
        call = item.call
        header = ToolCallDelta(index=call.index, id=call.id, type="function",
                               function=FunctionCallDelta(name=call.name, arguments=""))
        arguments = ToolCallDelta(index=call.index, function=FunctionCallDelta(arguments=call.arguments))
        return (self._chunk(ChatChunkChoice(index=item.index, delta=ChatDelta(tool_calls=[header]), logprobs=logprobs))
                + self._chunk(ChatChunkChoice(index=item.index, delta=ChatDelta(tool_calls=[arguments]))))

    def _progress(self, item: ToolRunning | ToolDone) -> bytes:
        """A server-side tool call starting or ending, as a named event whose data is also a chunk without
        choices (so OpenAI's SDKs parse it like the usage chunk)."""
        done = isinstance(item, ToolDone)
        progress = ToolProgressChunk(
            id=self.request_id, created=self.created, model=self.model, choices=[], usage=self.usage_field,
            round=item.round, tool_name=item.call.name, phase="complete" if done else "calling",
            data=ToolProgressData(call_id=item.call.id, outcome=item.result.outcome if done else None),  # type: ignore[union-attr]
        )
        return b"event: agentic_tool_call_progress\n" + event(progress)

    def closing(self) -> bytes:
        """The closing chunk with no choices and the request's usage (``stream_options.include_usage``)."""
        if not self.include_usage or self.usage is None:
            return b""
        return event(
            ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model, choices=[], usage=self.usage)
        )
