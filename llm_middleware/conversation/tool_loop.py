"""The server-side tool loop: generate, run the server's tools the model called, and generate again.

The server's tools are offered beside the client's (a name both use is the client's mistake).  A
round's text and reasoning reach the client as they come; its calls to tools the server runs are kept
back, run concurrently, and appended to the conversation (the assistant's calls, then one ``tool``
message per result, as chat templates expect) for the next generation, whose ``tool_choice`` is back
to ``auto``.  A round that calls a client's tool ends the loop with those calls (server calls of that
same round are not run: the client holds the conversation from there).  After ``max_rounds`` rounds
of tools one last generation runs with the server's tools withheld, so the answer never ends on a call
the client cannot run.  Usage sums every round.

Besides the core's events the loop tells of each call it runs (:class:`ToolRunning`, then
:class:`ToolDone` with the result); protocols render them as progress or as items of their own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..engine.outputs import Choice, Completion
from ..errors import InvalidRequestError
from ..request_info import RequestInfo
from ..runtime.loop_thread import on_loop
from ..tools.calls import ToolResult
from ..tools.toolbox import DEFAULT_MAX_TOOL_ROUNDS, DEFAULT_TOOL_TIMEOUT, PendingCall, ToolBox, ToolPermission
from .answer import ToolCall
from .events import ChoiceDone, ReasoningDelta, TextDelta, ToolCallMade, TurnEvent, TurnUsage
from .stream import TurnAnswer, gather, stream_turn
from .turn import PreparedTurn, ToolSpec, Turn, prepare

if TYPE_CHECKING:
    from ..engine.interface import EngineAPI


@dataclass(frozen=True, slots=True)
class ToolRunning:
    """The server started a call the model made in round ``round`` (counted from 1), run by ``source``
    (see :meth:`ToolBox.source`)."""

    index: int
    round: int
    call: ToolCall
    source: str


@dataclass(frozen=True, slots=True)
class ToolDone:
    """A call the server ran ended with ``result`` (which the next round's prompt holds)."""

    index: int
    round: int
    call: ToolCall
    result: ToolResult


LoopEvent = TurnEvent | ToolRunning | ToolDone


@dataclass(frozen=True, slots=True)
class ToolLoop:
    """What one request brings to the loop: the server's tools, the caller's request (given to tools
    that ask for it), the most rounds of tool calls it may run, and the event loop the tools run on
    (``home``: the loop that served the request, for a loop that goes on elsewhere, as a background
    response does; None: wherever the loop runs)."""

    toolbox: ToolBox
    info: RequestInfo | None
    max_rounds: int
    home: asyncio.AbstractEventLoop | None = None

    @classmethod
    def of(cls, toolbox: ToolBox, info: RequestInfo | None, requested: int | None) -> ToolLoop:
        """The loop for a request that asks for at most ``requested`` rounds (None: the server's limit,
        which a request may only lower)."""
        if requested is None:
            return cls(toolbox, info, toolbox.max_tool_rounds)
        return cls(toolbox, info, min(check_rounds(requested), toolbox.max_tool_rounds))


def check_rounds(requested: int) -> int:
    """A request's own ``max_tool_rounds``, checked."""
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise InvalidRequestError("'max_tool_rounds' must be an integer >= 0.", param="max_tool_rounds")
    return requested


def uses_server_tools(toolbox: ToolBox, turn: Turn) -> bool:
    """True when ``turn`` runs through the loop: the server has tools to offer, or dispatches the client's."""
    if turn.tool_choice == "none":
        return False
    return bool(toolbox.offered()) or (toolbox.dispatcher is not None and bool(turn.tools))


def _server_specs(toolbox: ToolBox, turn: Turn) -> list[ToolSpec]:
    client = {tool.name for tool in turn.tools}
    specs = []
    for tool in toolbox.offered():
        if tool.name in client:
            raise InvalidRequestError(
                f"The server offers a tool named '{tool.name}' itself; rename the client's tool.", param="tools"
            )
        specs.append(ToolSpec(tool.name, tool.description or None, tool.parameters))
    return specs


def offered(toolbox: ToolBox, turn: Turn) -> Turn:
    """``turn`` with the server's tools offered beside the client's (what the loop's first generation is
    asked), for a protocol that prepares the turn itself before the loop runs."""
    return replace(turn, tools=[*turn.tools, *_server_specs(toolbox, turn)])


@dataclass(eq=False)
class _Loop:
    engine: EngineAPI
    turn: Turn
    loop: ToolLoop
    server: list[ToolSpec]
    messages: list[dict[str, Any]] = field(default_factory=list)
    rounds: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def next_turn(self) -> Turn:
        """The turn of the next generation: the server's tools while rounds are left, ``tool_choice`` as
        asked only in the first (a name or ``required`` would force a call in every round)."""
        withheld = self.rounds >= self.loop.max_rounds
        choice = self.turn.tool_choice if self.rounds == 0 else "auto"
        if withheld and choice not in ("auto", "none", "required") and choice in {t.name for t in self.server}:
            choice = "auto"
        tools = list(self.turn.tools) if withheld else [*self.turn.tools, *self.server]
        return replace(self.turn, messages=self.messages, tools=tools, tool_choice=choice)

    async def generate(self, prepared: PreparedTurn | None = None) -> AsyncIterator[TurnEvent]:
        """Start the next generation (from ``prepared``, the next turn prepared already, where given)."""
        if prepared is None:
            prepared = await prepare(self.engine, self.next_turn())
        return await stream_turn(self.engine, prepared)

    def runs(self, call: ToolCall) -> bool:
        client = {tool.name for tool in self.turn.tools}
        if self.rounds >= self.loop.max_rounds:
            return False  # the last generation offers no server tool
        return self.loop.toolbox.runs(call.name, client)

    async def run(self, events: AsyncIterator[TurnEvent]) -> AsyncGenerator[LoopEvent, None]:
        try:
            while True:
                text: list[str] = []
                reasoning: list[str] = []
                server_calls: list[ToolCall] = []
                client_calls = False
                done: ChoiceDone | None = None
                async for event in events:
                    if isinstance(event, TurnUsage):
                        self.prompt_tokens += event.prompt_tokens
                        self.completion_tokens += event.completion_tokens
                        self.cached_tokens += event.cached_tokens
                    elif isinstance(event, ToolCallMade) and self.runs(event.call):
                        server_calls.append(event.call)
                    elif isinstance(event, ChoiceDone):
                        done = event
                    else:
                        if isinstance(event, ToolCallMade):
                            client_calls = True
                        elif isinstance(event, TextDelta):
                            text.append(event.text)
                        elif isinstance(event, ReasoningDelta):
                            reasoning.append(event.text)
                        yield event
                if not server_calls or client_calls:
                    if done is not None:
                        yield done
                    yield TurnUsage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)
                    return
                self.rounds += 1
                for call in server_calls:
                    yield ToolRunning(0, self.rounds, call, self.loop.toolbox.source(call.name))
                results = await on_loop(self.loop.home, self.loop.toolbox.run_round(
                    [PendingCall(call.id, call.name, call.arguments) for call in server_calls],
                    info=self.loop.info, round=self.rounds, request_id=self.turn.request_id or "-",
                ))
                for call, result in zip(server_calls, results, strict=True):
                    yield ToolDone(0, self.rounds, call, result)
                self._append(text, reasoning, server_calls, results)
                await _close(events)
                events = await self.generate()
        finally:
            await _close(events)

    def _append(self, text: list[str], reasoning: list[str], calls: list[ToolCall], results: list[ToolResult]) -> None:
        """The round as the conversation's next messages: the assistant's calls, then their results."""
        assistant: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(text).strip() or None,
            "tool_calls": [
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                for call in calls
            ],
        }
        if reasoning:
            assistant["reasoning_content"] = "".join(reasoning)
        self.messages.append(assistant)
        for call, result in zip(calls, results, strict=True):
            self.messages.append({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": result.content})


async def _close(events: AsyncIterator[TurnEvent]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        await close()


async def stream_with_tools(engine: EngineAPI, turn: Turn, loop: ToolLoop,
                            prepared: PreparedTurn | None = None) -> AsyncGenerator[LoopEvent, None]:
    """Start ``turn`` with the server's tools offered and return the loop's events.  The first generation
    is started here, so its errors (a clash of names, context length) come before any event; closing
    the events cancels the generation or the tool calls running then.  ``prepared`` is
    ``offered(toolbox, turn)`` prepared already, for a caller that needed it first."""
    if turn.sampling.get("n", 1) != 1:
        raise InvalidRequestError("'n' must be 1 when the server runs tools.", param="n")
    state = _Loop(engine, turn, loop, _server_specs(loop.toolbox, turn), messages=list(turn.messages))
    first = await state.generate(prepared)
    return state.run(first)


async def answer_with_tools(engine: EngineAPI, turn: Turn, loop: ToolLoop) -> TurnAnswer:
    """Run the loop to its end and return the final answer (usage summed over every round)."""
    events: list[TurnEvent] = []
    stream = await stream_with_tools(engine, turn, loop)
    try:
        async for event in stream:
            if not isinstance(event, ToolRunning | ToolDone):
                events.append(event)
    finally:
        await stream.aclose()
    return gather(events)


async def chat_with_tools(engine: EngineAPI, messages: list[dict[str, Any]], tools: list[Any], *,
                          model: str | None = None, chat_template_kwargs: dict[str, Any] | None = None,
                          request_id: str | None = None, tool_choice: str = "auto",
                          max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS, tool_timeout: float = DEFAULT_TOOL_TIMEOUT,
                          tool_permission: ToolPermission | None = None, **sampling: Any) -> Completion:
    """``engine.chat(messages, tools=[functions])``: the loop with the host's functions as the server's tools
    (no caller's request: a tool's ``RequestInfo`` parameter receives None), the final answer as a
    :class:`Completion` whose usage sums every round."""
    if any(isinstance(tool, Mapping) for tool in tools):
        raise TypeError("engine.chat takes either tool dicts or Python functions as tools, not both")
    toolbox = ToolBox(tools, max_tool_rounds=max_tool_rounds, tool_timeout=tool_timeout, tool_permission=tool_permission)
    request_id = request_id or f"chat-{uuid.uuid4().hex}"
    turn = Turn(messages=messages, model=model, tool_choice=tool_choice, sampling=sampling,
                chat_template_kwargs=chat_template_kwargs, request_id=request_id)
    answer = await answer_with_tools(engine, turn, ToolLoop(toolbox, None, max_tool_rounds))
    [choice] = answer.choices
    finish: Any = choice.finish_reason
    return Completion(
        id=request_id,
        model=engine.resolve_model(model, task="generate"),
        choices=[Choice(0, choice.content or "", [], finish, choice.logprobs)],
        usage=answer.usage.counts(),
        prompt_token_ids=[],
    )
