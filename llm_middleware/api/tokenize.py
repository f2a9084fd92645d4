"""``POST /tokenize`` and ``POST /detokenize``, with vLLM's request and response bodies."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..cpu_pool import run_cpu
from ..errors import InvalidRequestError
from .decoding import decode_body
from .guided import check_tool_parameters
from .http import Request, Response
from .messages import template_messages, template_tools
from .responses import json_response
from .schemas import DetokenizeResponse, TokenizeResponse, detokenize_request_decoder, tokenize_request_decoder

if TYPE_CHECKING:
    from ..engine.engine import Engine

# Decoding, rendering and tokenizing are request-sized CPU work, and the engine's text helpers
# block until the model has loaded: all of it runs on the CPU pool, off the event loop.


def _tokens(engine: Engine, request: Request) -> TokenizeResponse:
    body = decode_body(request, tokenize_request_decoder)
    if (body.prompt is None) == (body.messages is None):
        raise InvalidRequestError("Give exactly one of 'prompt' and 'messages'.", param="prompt")
    check_tool_parameters(body.tools or [])
    model = engine.resolve_model(body.model)
    if body.messages is not None:
        text = engine.apply_chat_template(
            template_messages(body.messages),
            model=model,
            tools=template_tools(body.tools) if body.tools else None,
            chat_template_kwargs=body.chat_template_kwargs,
        )
    else:
        text = body.prompt or ""
    tokens = engine.tokenize(text, model=model)
    max_model_len = next(info.max_model_len for info in engine.models() if info.name == model)
    return TokenizeResponse(count=len(tokens), max_model_len=max_model_len, tokens=tokens)


async def tokenize(engine: Engine, request: Request, request_id: str) -> Response:
    """Token ids of ``prompt``, or of ``messages`` rendered by the chat template."""
    return json_response(await run_cpu(_tokens, engine, request))


def _text(engine: Engine, request: Request) -> DetokenizeResponse:
    body = decode_body(request, detokenize_request_decoder)
    return DetokenizeResponse(prompt=engine.detokenize(body.tokens, model=engine.resolve_model(body.model)))


async def detokenize(engine: Engine, request: Request, request_id: str) -> Response:
    """The text of ``tokens``."""
    return json_response(await run_cpu(_text, engine, request))
