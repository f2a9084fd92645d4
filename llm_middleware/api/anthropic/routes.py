"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: Anthropic's bodies over the conversation core."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from ...conversation.stream import TurnAnswer, answer_turn, stream_turn
from ...conversation.tool_loop import ToolLoop, stream_with_tools
from ...conversation.turn import PreparedTurn, Turn, prepare
from ...runtime.cpu_pool import run_cpu
from ...tools.toolbox import ToolBox
from ..core.server_tools import server_loop
from ..core.decoding import decode_body
from ..core.http import Request, Response
from ..core.responses import json_response
from ..core.routing import Route
from ..core.sse import EventStream, streaming_response
from ..openai.forward import ForwardingEngine
from . import request as translate
from .errors import FRAMING
from .render import MessageStream, content_blocks, stop_reason, usage
from .types import (
    CountTokensRequest,
    ErrorResponse,
    Message,
    MessagesRequest,
    StreamEvent,
    TokenCount,
    count_tokens_request_decoder,
    messages_request_decoder,
)

if TYPE_CHECKING:
    from ...engine.interface import EngineAPI

#: Where the Messages API lives, relative to the base path; failures below it are answered in its error shape.
MESSAGES_PATH = "/v1/messages"

STREAM_FORMAT = "`event: <type>` and `data: <event>` frames, from `message_start` to `message_stop`"

# The core names sampling fields as the engine does; errors name them as Anthropic's clients sent them.
_PARAM_NAMES = {"stop": "stop_sequences"}


def _turn(body: MessagesRequest | CountTokensRequest, request_id: str) -> Turn:
    """The conversation turn a request asks for (request-sized work: for the CPU pool)."""
    tool_choice, parallel = translate.tool_choice(body.tool_choice)
    return Turn(
        messages=translate.template_messages(body),
        model=body.model,
        tools=translate.tools(body),
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        output=translate.output(body),
        sampling=translate.sampling(body) if isinstance(body, MessagesRequest) else {},
        thinking=translate.thinking(body.thinking),
        request_id=request_id,
        param_names=_PARAM_NAMES,
    )


def _decode_turn(request: Request, request_id: str) -> tuple[MessagesRequest, Turn]:
    body = decode_body(request, messages_request_decoder)
    return body, _turn(body, request_id)


def message(message_id: str, model: str, answer: TurnAnswer) -> Message:
    """The whole message of a turn's answer (its one choice)."""
    choice = answer.choices[0]
    return Message(
        id=message_id,
        model=model,
        content=content_blocks(choice.reasoning, choice.content, choice.tool_calls),
        stop_reason=stop_reason(choice.finish_reason, choice.stop_sequence),
        stop_sequence=choice.stop_sequence,
        usage=usage(answer.usage),
    )


async def create_message(engine: EngineAPI, request: Request, request_id: str, *,
                         tools: ToolBox | None = None) -> Response:
    """Answer a Messages request: the whole message, or its events when ``stream`` is set; with the
    server's ``tools`` (if it has any to offer) through the tool loop."""
    body, turn = await run_cpu(_decode_turn, request, request_id)
    loop = await server_loop(tools, turn, request)
    if loop is not None:
        return await _with_tools(engine, body, turn, loop, request_id)
    prepared = await prepare(engine, turn)
    if body.stream:
        events = await stream_turn(engine, prepared)
        frames = MessageStream(request_id, prepared.model)
        return streaming_response(EventStream(events, frames.on_event, FRAMING, closing=frames.closing))
    return json_response(message(request_id, prepared.model, await answer_turn(engine, prepared)))


async def _with_tools(engine: EngineAPI, body: MessagesRequest, turn: Turn, loop: ToolLoop,
                      request_id: str) -> Response:
    """A message through the tool loop: each call the server ran is an ``mcp_tool_use`` block and its
    result an ``mcp_tool_result`` block, where they happened among the answer's own blocks."""
    model = engine.resolve_model(turn.model, task="generate")
    events = await stream_with_tools(engine, turn, loop)
    frames = MessageStream(request_id, model)
    if body.stream:
        return streaming_response(EventStream(events, frames.on_event, FRAMING, closing=frames.closing))
    try:
        async for event in events:
            frames.on_event(event)
    finally:
        await events.aclose()
    return json_response(frames.message())


async def _prompt_tokens(engine: EngineAPI, prepared: PreparedTurn) -> int:
    """How many tokens the prompt of ``prepared`` takes: rendered and tokenized here, or by the
    upstream servers of an engine that forwards requests (they hold the chat template)."""
    call = prepared.call
    if isinstance(engine, ForwardingEngine):
        fields: dict[str, Any] = {"model": prepared.model, "messages": prepared.messages}
        if call.get("tools"):
            fields["tools"] = call["tools"]
        if call.get("chat_template_kwargs"):
            fields["chat_template_kwargs"] = call["chat_template_kwargs"]
        answer = await engine.forward("tokenize", fields, request_id=call["request_id"])
        return int(answer["count"])
    await engine.wait_ready(model=prepared.model)

    def count() -> int:
        text = engine.apply_chat_template(
            prepared.messages, model=prepared.model, tools=call.get("tools"),
            chat_template_kwargs=call.get("chat_template_kwargs"),
        )
        return len(engine.tokenize(text, model=prepared.model))

    return await run_cpu(count)


def _decode_count(request: Request, request_id: str) -> Turn:
    return _turn(decode_body(request, count_tokens_request_decoder), request_id)


async def count_tokens(engine: EngineAPI, request: Request, request_id: str) -> Response:
    """How many input tokens a Messages request with this conversation (and tools) would take."""
    turn = await run_cpu(_decode_count, request, request_id)
    prepared = await prepare(engine, turn)
    return json_response(TokenCount(input_tokens=await _prompt_tokens(engine, prepared)))


def anthropic_routes(engine: EngineAPI, tools: ToolBox | None = None) -> list[Route]:
    """Anthropic's Messages routes over ``engine``, messages with the server's ``tools``."""
    return [
        Route("POST", MESSAGES_PATH, partial(create_message, engine, tools=tools), "Create a message (Anthropic Messages API)",
              id_prefix="msg_", request_type=MessagesRequest, response_type=Message, stream_type=StreamEvent,
              error_type=ErrorResponse, stream_format=STREAM_FORMAT),
        Route("POST", MESSAGES_PATH + "/count_tokens", partial(count_tokens, engine),
              "Count the input tokens of a message (Anthropic Messages API)",
              request_type=CountTokensRequest, response_type=TokenCount, error_type=ErrorResponse),
    ]
