"""``POST /tokenize`` and ``POST /detokenize``, with vLLM's request and response bodies."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...conversation.turn import check_messages, check_tools, template_tools
from ...errors import InvalidRequestError
from ...runtime.cpu_pool import run_cpu
from ..core.decoding import decode_body
from ..core.http import Request, Response
from ..core.responses import json_response
from .messages import tool_specs, turn_messages
from .types.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    detokenize_request_decoder,
    tokenize_request_decoder,
)

if TYPE_CHECKING:
    from ...engine.engine import Engine

# Decoding, rendering and tokenizing are request-sized CPU work: it runs on the CPU pool, off the
# event loop.  The engine's text helpers block until the model has loaded, so the handlers first
# wait for the load without holding a thread.


def _tokens(engine: Engine, body: TokenizeRequest, model: str) -> TokenizeResponse:
    if (body.prompt is None) == (body.messages is None):
        raise InvalidRequestError("Give exactly one of 'prompt' and 'messages'.", param="prompt")
    tools = tool_specs(body.tools)
    check_tools(tools)
    if body.messages is not None:
        text = engine.apply_chat_template(
            check_messages(turn_messages(body.messages)),
            model=model,
            tools=template_tools(tools) if tools else None,
            chat_template_kwargs=body.chat_template_kwargs,
        )
    else:
        text = body.prompt or ""
    tokens = engine.tokenize(text, model=model)
    max_model_len = next(info.max_model_len for info in engine.models() if info.name == model)
    return TokenizeResponse(count=len(tokens), max_model_len=max_model_len, tokens=tokens)


async def tokenize(engine: Engine, request: Request, request_id: str) -> Response:
    """Token ids of ``prompt``, or of ``messages`` rendered by the chat template."""
    body: TokenizeRequest = await run_cpu(decode_body, request, tokenize_request_decoder)
    model = engine.resolve_model(body.model)
    await engine.wait_ready(model=model)
    return json_response(await run_cpu(_tokens, engine, body, model))


async def detokenize(engine: Engine, request: Request, request_id: str) -> Response:
    """The text of ``tokens``."""
    body: DetokenizeRequest = await run_cpu(decode_body, request, detokenize_request_decoder)
    model = engine.resolve_model(body.model)
    await engine.wait_ready(model=model)
    return json_response(DetokenizeResponse(prompt=await run_cpu(engine.detokenize, body.tokens, model=model)))
