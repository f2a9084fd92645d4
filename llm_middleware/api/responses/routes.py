"""``/v1/responses``: create (whole, streamed or in the background), retrieve, delete, cancel, list input items.

A thin adapter over the conversation core: the body becomes a :class:`~...conversation.Turn`, the
turn's events become Responses events through one :class:`ResponseBuilder`, and the response
object goes into the store, owned by the identity of the request that made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import msgspec

from ...conversation import (
    ChoiceDone,
    OutputFormat,
    ReasoningDelta,
    TextDelta,
    ToolCallMade,
    ToolSpec,
    Turn,
    TurnUsage,
    prepare,
    stream_turn,
)
from ...conversation.tool_loop import (
    LoopEvent,
    ToolDone,
    ToolRunning,
    offered,
    stream_with_tools,
)
from ...engine.outputs import TokenLogprob as EngineLogprob
from ...errors import EngineNotReadyError, InvalidRequestError, LLMError
from ...runtime.cpu_pool import run_cpu
from ...store.protocol import ResponseStore, StoredItem, StoredResponse
from ...tools.toolbox import ToolBox
from ..core.server_tools import server_loop
from ..core.decoding import decode_body
from ..core.errors import client_error
from ..core.http import Request, Response
from ..core.responses import JSON_HEADERS, json_response
from ..core.routing import Route, path_params
from ..core.sse import HEADERS as SSE_HEADERS
from ..core.sse import EventStream, Framing, named_event
from ..core.streams import resume
from . import request as fields
from .items import Conversation, as_input, conversation, items_decoder, new_id
from .render import RUNNING, ResponseBuilder, usage_of
from .runs import BackgroundRuns, Run
from .types import (
    DeletedResponse,
    InputItemList,
    ResponseObject,
    ResponsesRequest,
    StreamEvent,
    TokenLogprob,
    TopLogprob,
    response_decoder,
    responses_request_decoder,
)

if TYPE_CHECKING:
    from ...engine.interface import EngineAPI

RESPONSE = "/v1/responses/{response_id}"
#: The most a conversation continued through ``previous_response_id`` may hold (encoded items): far past
#: any model's context, it bounds what a chain of responses can make the store keep.
MAX_CONVERSATION_BYTES = 16 * 2**20
#: How often a background run looks in the store for a cancel (or delete) made by another process.
CANCEL_POLL_SECONDS = 1.0
_encoder = msgspec.json.Encoder()
logger = logging.getLogger("llm_middleware")
# The core's field names, as this protocol spells them in errors.
_PARAM_NAMES = {"max_tokens": "max_output_tokens", "messages": "input"}


class ResponseNotFoundError(LLMError):
    """No stored response with that id for this caller (HTTP 404)."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


def frames(events: list[StreamEvent]) -> bytes:
    """The frames of ``events``, joined."""
    return b"".join(named_event(event) for event in events)


def _publish(run: Run, events: list[StreamEvent]) -> None:
    """Each event a frame of its own: a follower's ``starting_after`` counts frames as sequence numbers."""
    for event in events:
        run.publish(named_event(event))


def _logprobs(logprobs: list[EngineLogprob] | None) -> list[TokenLogprob] | None:
    if not logprobs:
        return None
    return [
        TokenLogprob(token=lp.token, bytes=list(lp.bytes), logprob=lp.logprob,
                     top_logprobs=[TopLogprob(token=t.token, bytes=list(t.bytes), logprob=t.logprob)
                                   for t in lp.top_logprobs])
        for lp in logprobs
    ]


class _Ending:
    """What the turn's events said beside its items: why it finished, its token counts, and the
    log-probabilities of answer text still held back (they go out with that text)."""

    def __init__(self) -> None:
        self.reason = "stop"
        self.usage: TurnUsage | None = None
        self.held: list[EngineLogprob] = []


def _render(builder: ResponseBuilder, event: LoopEvent, ending: _Ending, logprobs: bool) -> list[StreamEvent]:
    """The Responses events of one turn event (one choice: the Responses API has no ``n``); a call the
    server runs is an ``mcp_call`` item, in progress while it runs."""
    if isinstance(event, ToolRunning):
        ending.held = []  # the text they were for became the call
        return builder.server_call(event.call.id, event.call.name, event.call.arguments, event.source)
    if isinstance(event, ToolDone):
        return builder.server_result(event.call.id, event.result.content, event.result.outcome == "ok")
    if isinstance(event, ReasoningDelta):
        return builder.reasoning(event.text) if event.text else []
    if isinstance(event, TextDelta):
        if logprobs and event.logprobs:
            ending.held += event.logprobs
        if not event.text:
            return []
        held, ending.held = ending.held, []
        return builder.text(event.text, _logprobs(held) if logprobs else None)
    if isinstance(event, ToolCallMade):
        ending.held = []  # the text they were for became the call
        return builder.tool_call(event.call.id, event.call.name, event.call.arguments)
    if isinstance(event, ChoiceDone):
        ending.reason = event.finish_reason
    elif isinstance(event, TurnUsage):
        ending.usage = event
    return []


class ResponsesRoutes:
    """The Responses API over ``engine``, keeping responses in ``store`` and background runs in ``runs``."""

    def __init__(self, engine: EngineAPI, store: ResponseStore, runs: BackgroundRuns,
                 tools: ToolBox | None = None) -> None:
        self.engine = engine
        self.store = store
        self.runs = runs
        self.tools = tools if tools is not None else ToolBox()

    def routes(self) -> list[Route]:
        """The five routes."""
        return [
            Route("POST", "/v1/responses", self.create, "Create a response",
                  request_type=ResponsesRequest, response_type=ResponseObject, stream_type=StreamEvent,
                  stream_format="`event: <type>` and `data: <event>` per event, numbered by "
                                     "`sequence_number`; the last is `response.completed`, `.incomplete` or `.failed`"),
            Route("GET", RESPONSE, self.retrieve, "Retrieve a stored response", response_type=ResponseObject),
            Route("DELETE", RESPONSE, self.delete, "Delete a stored response", response_type=DeletedResponse),
            Route("POST", RESPONSE + "/cancel", self.cancel, "Cancel a background response",
                  response_type=ResponseObject),
            Route("GET", RESPONSE + "/input_items", self.input_items, "List a stored response's input items",
                  response_type=InputItemList),
        ]

    # ---- create -------------------------------------------------------------------------------------

    async def _history(self, body: ResponsesRequest, owner: str) -> bytes:
        if body.previous_response_id is None:
            return b"[]"
        stored = await self.store.get(owner, body.previous_response_id)
        if stored is None:
            raise ResponseNotFoundError(
                f"Previous response with id '{body.previous_response_id}' not found.",
                param="previous_response_id", code="previous_response_not_found",
            )
        if stored.status in RUNNING:
            raise InvalidRequestError(
                f"Previous response '{body.previous_response_id}' is still {stored.status}; wait until it ends.",
                param="previous_response_id",
            )
        if len(stored.conversation) > MAX_CONVERSATION_BYTES:
            raise InvalidRequestError(
                f"The conversation of '{body.previous_response_id}' is too long to continue.",
                param="previous_response_id",
            )
        return stored.conversation

    def _decode(self, request: Request) -> ResponsesRequest:
        """The checked body: request-sized work, for the CPU pool."""
        body = decode_body(request, responses_request_decoder)
        fields.check_request(body)
        return body

    def _turn(self, body: ResponsesRequest, convo: Conversation, request_id: str) -> Turn:
        messages = convo.messages
        if body.instructions is not None:
            messages = [{"role": "system", "content": body.instructions}, *messages]
        fmt = body.text.format if body.text is not None else None
        output = OutputFormat()
        if fmt is not None and fmt.type != "text":
            output = OutputFormat(type=fmt.type, schema=fmt.schema,
                                  param="text.format.schema" if fmt.type == "json_schema" else "text.format")
        return Turn(
            messages=messages,
            model=body.model,
            tools=[ToolSpec(tool.name or "", tool.description, tool.parameters, param=f"tools[{i}].parameters")
                   for i, tool in enumerate(body.tools or ())],
            tool_choice=fields.tool_choice(body),
            parallel_tool_calls=body.parallel_tool_calls is not False,
            output=output,
            sampling=fields.sampling(body),
            chat_template_kwargs=body.chat_template_kwargs,
            thinking=fields.thinking(body),
            request_id=request_id,
            param_names=_PARAM_NAMES,
        )

    async def create(self, request: Request, request_id: str) -> Response:
        """``POST /v1/responses``."""
        body = await run_cpu(self._decode, request)
        history = await self._history(body, request.identity)
        convo, start = await run_cpu(lambda: conversation(items_decoder.decode(history), body.input))
        turn_request = self._turn(body, convo, request_id)
        loop = await server_loop(self.tools, turn_request, request)
        if loop is not None:
            # A background run goes on on a loop of its own; its tools run on this one, the host's.
            loop = replace(loop, home=asyncio.get_running_loop())
        prepared = await prepare(self.engine, turn_request if loop is None else offered(self.tools, turn_request))
        begin: Callable[[], Awaitable[AsyncGenerator[LoopEvent, None]]]
        if loop is None:
            begin = partial(stream_turn, self.engine, prepared)
        else:
            begin = partial(stream_with_tools, self.engine, turn_request, loop, prepared)
        response = ResponseObject(
            id=new_id("resp_"), created_at=int(time.time()), status="queued" if body.background else "in_progress",
            model=prepared.model, **fields.echoed(body),
        )
        builder = ResponseBuilder(response)
        logprobs = fields.wants_logprobs(body)
        input_items = [StoredItem(id=item.id, data=_encoder.encode(item)) for item in convo.items[start:]]
        store = body.store is not False
        save = partial(self._save, request.identity, convo, builder) if store else None
        if body.background:
            if self.runs.closed:
                raise EngineNotReadyError("The server is stopping; start background responses elsewhere.",
                                          retry_after=1)
            # Encoded now: once the run starts, the builder changes the response on the run's own loop.
            queued = _encoder.encode(response)
            # The conversation so far is stored at once: a response cancelled before it ends continues from it.
            await self.store.put(
                StoredResponse(id=response.id, owner=request.identity, created_at=time.time(), status="queued",
                               response=queued, conversation=await run_cpu(as_input, convo.items)),
                input_items,
            )
            run = Run(response.id, request.identity)
            _publish(run, builder.created())
            await self.runs.start(run, partial(self._run_in_background, begin, builder, logprobs, save))
            if body.stream:
                return _sse(EventStream(run.frames(), lambda data: data, _FRAMING))
            return Response(status=200, headers=list(JSON_HEADERS), body=queued)

        generated = self._generate(await begin(), builder, logprobs, save, input_items, catch=bool(body.stream))
        if body.stream:
            opening = frames(builder.created())
            return _sse(EventStream(resume(opening, _encoded(generated)), lambda data: data, _FRAMING))
        async for _ in generated:
            pass
        return json_response(builder.response)

    async def _save(self, owner: str, convo: Conversation, builder: ResponseBuilder,
                    input_items: list[StoredItem] | None) -> None:
        """Store the finished response: put it (``input_items`` given) or update the background record."""
        response = builder.response
        # Conversation-sized: encoded on the CPU pool, as the request was decoded.
        record, history = await run_cpu(lambda: (_encoder.encode(response), as_input([*convo.items, *response.output])))
        if input_items is not None:
            await self.store.put(
                StoredResponse(id=response.id, owner=owner, created_at=time.time(), status=response.status,
                               response=record, conversation=history),
                input_items,
            )
        else:
            await self.store.update(owner, response.id, status=response.status, response=record,
                                    conversation=history, if_status=RUNNING)

    async def _generate(self, turn: AsyncGenerator[LoopEvent, None], builder: ResponseBuilder, logprobs: bool,
                        save: partial[object] | None, input_items: list[StoredItem] | None, *,
                        catch: bool) -> AsyncGenerator[list[StreamEvent], None]:
        """The Responses events of ``turn``, the response stored before its last event.  With ``catch``,
        a failure ends the response as ``failed`` (stored too); otherwise it propagates."""
        ending = _Ending()
        try:
            async for event in turn:
                if events := _render(builder, event, ending, logprobs):
                    yield events
        except Exception as exc:
            if not catch:
                raise
            events = builder.fail(client_error(exc, streaming=True))
        else:
            usage = ending.usage
            events = builder.finish(
                ending.reason,
                usage_of(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) if usage is not None else None,
            )
        finally:
            await turn.aclose()
        if save is not None:
            try:
                await save(input_items)
            except Exception:
                if not catch:
                    raise
                # The client has the whole answer already: it ends as it ended; only the copy to retrieve is lost.
                logger.exception("response %s could not be stored", builder.response.id)
        yield events

    async def _run_in_background(self, begin: Callable[[], Awaitable[AsyncGenerator[LoopEvent, None]]],
                                 builder: ResponseBuilder, logprobs: bool, save: partial[object] | None,
                                 run: Run) -> None:
        """A background response: queued, then in progress, then ended and stored; cancelled by a client
        (who already stored that), or failed by a shutdown."""
        try:
            _publish(run, builder.in_progress())
            if not await self.store.update(run.owner, run.response_id, status="in_progress",
                                           response=_encoder.encode(builder.response), if_status=("queued",)):
                return  # cancelled or deleted through another process before it started
            try:
                turn = await begin()
            except Exception as exc:
                _publish(run, builder.fail(client_error(exc, streaming=True)))
                if save is not None:
                    await save(None)
                return
            check_at = time.monotonic() + CANCEL_POLL_SECONDS
            async with contextlib.aclosing(self._generate(turn, builder, logprobs, save, None, catch=True)) as events:
                async for batch in events:
                    _publish(run, batch)
                    if time.monotonic() >= check_at:
                        check_at = time.monotonic() + CANCEL_POLL_SECONDS
                        record = await self.store.get(run.owner, run.response_id)
                        if record is None or record.status not in RUNNING:
                            return  # cancelled or deleted through another process sharing the store
        except asyncio.CancelledError:
            if run.stop_reason == "shutdown":
                error = LLMError("The server shut down before the response was complete.")
                _publish(run, builder.fail(error))
                if save is not None:
                    await save(None)
        except Exception as exc:  # the store failed: followers still see the end, and the store may take it
            logger.exception("background response %s failed", run.response_id)
            _publish(run, builder.fail(client_error(exc, streaming=True)))
            if save is not None:
                with contextlib.suppress(Exception):
                    await save(None)

    # ---- the stored response's routes -------------------------------------------------------------

    async def _stored(self, request: Request, template: str) -> StoredResponse:
        response_id = path_params(template, request.path).get("response_id", "")
        stored = await self.store.get(request.identity, response_id)
        if stored is None:
            raise ResponseNotFoundError(f"No response with id '{response_id}' found.", param="response_id")
        return stored

    async def retrieve(self, request: Request, request_id: str) -> Response:
        """``GET /v1/responses/{response_id}``; ``?stream=true`` follows a background response still running here."""
        stored = await self._stored(request, RESPONSE)
        query = parse_qs(request.query_string.decode("latin-1"))
        if query.get("stream", ["false"])[-1] == "true":
            run = self.runs.find(request.identity, stored.id)
            if run is None:
                raise InvalidRequestError(
                    "Only a background response still running can be streamed.", param="stream"
                )
            after = _query_int(query, "starting_after", "-1", -1, 10**9)
            return _sse(EventStream(run.frames(after), lambda data: data, _FRAMING))
        return Response(status=200, headers=list(JSON_HEADERS), body=stored.response)

    async def delete(self, request: Request, request_id: str) -> Response:
        """``DELETE /v1/responses/{response_id}``: a running background response is cancelled first."""
        stored = await self._stored(request, RESPONSE)
        if (run := self.runs.find(request.identity, stored.id)) is not None:
            run.stop("cancel")
        if not await self.store.delete(request.identity, stored.id):
            raise ResponseNotFoundError(f"No response with id '{stored.id}' found.", param="response_id")
        return json_response(DeletedResponse(id=stored.id))

    async def cancel(self, request: Request, request_id: str) -> Response:
        """``POST /v1/responses/{response_id}/cancel``: a running background response becomes ``cancelled``;
        a finished one comes back as it is."""
        stored = await self._stored(request, RESPONSE + "/cancel")
        response = await run_cpu(response_decoder.decode, stored.response)
        if not response.background:
            raise InvalidRequestError("Only background responses can be cancelled.", param="response_id")
        if stored.status in RUNNING:
            response.status = "cancelled"
            await self.store.update(request.identity, stored.id, status="cancelled",
                                    response=_encoder.encode(response), if_status=RUNNING)
            if (run := self.runs.find(request.identity, stored.id)) is not None:
                run.stop("cancel")
            stored = await self._stored(request, RESPONSE + "/cancel")
        return Response(status=200, headers=list(JSON_HEADERS), body=stored.response)

    async def input_items(self, request: Request, request_id: str) -> Response:
        """``GET /v1/responses/{response_id}/input_items?after=&limit=&order=``."""
        template = RESPONSE + "/input_items"
        response_id = path_params(template, request.path).get("response_id", "")
        query = parse_qs(request.query_string.decode("latin-1"))
        limit = _query_int(query, "limit", "20", 1, 100)
        order = query.get("order", ["desc"])[-1]
        if order not in ("asc", "desc"):
            raise InvalidRequestError("'order' must be 'asc' or 'desc'.", param="order")
        page = await self.store.list_input_items(
            request.identity, response_id, after=query.get("after", [None])[-1], limit=limit,
            order=order,  # type: ignore[arg-type]
        )
        if page is None:
            raise ResponseNotFoundError(f"No response with id '{response_id}' found.", param="response_id")
        # The items were encoded by this module: they go out as they are.
        return json_response(_RawItemList(data=[msgspec.Raw(item.data) for item in page.items],
                                          first_id=page.first_id, last_id=page.last_id, has_more=page.has_more))


def _query_int(query: dict[str, list[str]], name: str, default: str, low: int, high: int) -> int:
    """The query parameter ``name``: ASCII digits (a leading ``-`` for a negative ``low``) from ``low`` to ``high``."""
    text = query.get(name, [default])[-1]
    digits = text.removeprefix("-") if low < 0 else text
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 10 and low <= int(text) <= high):
        raise InvalidRequestError(f"'{name}' must be an integer from {low} to {high}.", param=name)
    return int(text)


class _RawItemList(msgspec.Struct, kw_only=True):
    """:class:`InputItemList` with its items already encoded."""

    object: str = "list"
    data: list[msgspec.Raw]
    first_id: str | None
    last_id: str | None
    has_more: bool


async def _encoded(generated: AsyncGenerator[list[StreamEvent], None]) -> AsyncGenerator[bytes, None]:
    try:
        async for events in generated:
            yield frames(events)
    finally:
        await generated.aclose()


def _error_frame(exc: BaseException) -> bytes:
    """A failure outside the turn (ours): the ``error`` event, numbered after nothing known."""
    error = client_error(exc, streaming=True)
    return (b"event: error\ndata: "
            + _encoder.encode({"type": "error", "sequence_number": 0, "code": error.code, "message": error.message,
                               "param": error.param})
            + b"\n\n")


#: Responses streams end with their last event: there is no ``[DONE]``.
_FRAMING = Framing(last=b"", error_event=_error_frame)


def _sse(stream: EventStream[bytes]) -> Response:
    return Response(status=200, headers=list(SSE_HEADERS), stream=stream)
