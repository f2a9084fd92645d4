"""Run a prepared turn on an engine: its events as they come, or its whole answer.

Both read the engine's output through the same :class:`TurnSplitter`: reasoning apart from the
answer, tool calls parsed from the answer only, finish reasons and usage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..engine.outputs import Delta, TokenLogprob
from ..engine.text.reasoning import ReasoningFormat
from ..errors import LLMError
from .answer import ChoiceSplitter, ToolCall, ToolSettings, finish_reason
from .events import ChoiceDone, ReasoningDelta, TextDelta, ToolCallMade, TurnEvent, TurnUsage
from .reasoning import ReasoningSplitter
from .turn import PreparedTurn

if TYPE_CHECKING:
    from ..engine.interface import EngineAPI


class _Choice:
    """The splitting state of one choice."""

    def __init__(self, tools: ToolSettings | None, reasoning: ReasoningFormat | None) -> None:
        self.reasoning = ReasoningSplitter(reasoning)
        self.calls = ChoiceSplitter(tools) if tools is not None else None


class TurnSplitter:
    """Turns the engine's deltas of one request into turn events (stateful: one per request)."""

    def __init__(self, tools: ToolSettings | None, reasoning: ReasoningFormat | None) -> None:
        self._tools = tools
        self._reasoning = reasoning
        self._choices: dict[int, _Choice] = {}

    @classmethod
    def of(cls, prepared: PreparedTurn) -> TurnSplitter:
        """The splitter for ``prepared``'s output."""
        return cls(prepared.tools, prepared.reasoning)

    def on_delta(self, delta: Delta) -> list[TurnEvent]:
        """The events one delta decides, in order.  The delta's log-probabilities ride on its first
        text event (an empty :class:`TextDelta` when its text is held back)."""
        index = delta.index
        choice = self._choices.get(index) or self._choices.setdefault(index, _Choice(self._tools, self._reasoning))
        last = delta.finish_reason is not None
        thought, answer = [], []
        for part, text in choice.reasoning.feed(delta.text, last=last):
            (thought if part == "reasoning" else answer).append(text)
        events: list[TurnEvent] = []
        if thought:
            events.append(ReasoningDelta(index, "".join(thought)))
        text = "".join(answer)
        if choice.calls is None:
            if text:
                events.append(TextDelta(index, text))
        elif text or last:
            for piece in choice.calls.feed(text, last=last):
                events.append(TextDelta(index, piece) if isinstance(piece, str) else ToolCallMade(index, piece))
        if delta.logprobs:
            if events:
                events[0] = replace(events[0], logprobs=delta.logprobs)
            else:
                events.append(TextDelta(index, "", delta.logprobs))
        if last:
            made_calls = choice.calls is not None and choice.calls.made_calls
            events.append(ChoiceDone(index, finish_reason(delta.finish_reason, made_calls), delta.stop))
        if delta.usage is not None:
            events.append(TurnUsage.of(delta.usage))
        return events


class TurnStream:
    """The events of one streamed turn: an async iterator whose :meth:`aclose` cancels the engine request."""

    def __init__(self, first: Delta | None, deltas: AsyncIterator[Delta], splitter: TurnSplitter) -> None:
        self._first = first
        self._deltas = deltas
        self._splitter = splitter
        self._ready: list[TurnEvent] = []

    def __aiter__(self) -> TurnStream:
        return self

    async def __anext__(self) -> TurnEvent:
        while not self._ready:
            if self._first is not None:
                delta, self._first = self._first, None
            else:
                delta = await anext(self._deltas)  # StopAsyncIteration ends this stream too
            self._ready = self._splitter.on_delta(delta)
        return self._ready.pop(0)

    async def aclose(self) -> None:
        """Stop reading; the engine request behind the stream is cancelled."""
        await self._deltas.aclose()  # type: ignore[attr-defined]


async def stream_turn(engine: EngineAPI, prepared: PreparedTurn) -> TurnStream:
    """Start ``prepared`` on ``engine`` and return its events.  The engine's first output is awaited
    here, so errors it raises up front (context length, sampling values) come before any event."""
    deltas = engine.stream_chat(prepared.messages, **prepared.call)
    try:
        first = await anext(deltas, None)
    except BaseException as exc:
        await deltas.aclose()  # type: ignore[attr-defined]
        if isinstance(exc, LLMError):
            prepared.turn.rename(exc)
        raise
    return TurnStream(first, deltas, TurnSplitter.of(prepared))


@dataclass(slots=True)
class ChoiceAnswer:
    """One whole choice: its reasoning (None when it wrote none), its answer text (None when it only
    made calls), its tool calls, why it finished (and the stop string that ended it, if one did), and its
    tokens' log-probabilities when asked for."""

    index: int
    reasoning: str | None = None
    content: str | None = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = "stop"
    logprobs: list[TokenLogprob] | None = None
    stop_sequence: str | None = None


@dataclass(slots=True)
class TurnAnswer:
    """A whole turn: every choice in index order, and the usage."""

    choices: list[ChoiceAnswer]
    usage: TurnUsage


def gather(events: list[TurnEvent]) -> TurnAnswer:
    """The whole answer that a turn's events make."""
    choices: dict[int, ChoiceAnswer] = {}
    thoughts: dict[int, list[str]] = {}
    texts: dict[int, list[str]] = {}
    usage = TurnUsage(0, 0)
    for event in events:
        if isinstance(event, TurnUsage):
            usage = event
            continue
        choice = choices.get(event.index) or choices.setdefault(event.index, ChoiceAnswer(event.index))
        if isinstance(event, ChoiceDone):
            choice.finish_reason = event.finish_reason
            choice.stop_sequence = event.stop_sequence
            continue
        if event.logprobs is not None:
            choice.logprobs = [*(choice.logprobs or ()), *event.logprobs]
        if isinstance(event, ReasoningDelta):
            thoughts.setdefault(event.index, []).append(event.text)
        elif isinstance(event, TextDelta):
            texts.setdefault(event.index, []).append(event.text)
        else:
            choice.tool_calls.append(event.call)
    for index, choice in choices.items():
        if index in thoughts:
            choice.reasoning = "".join(thoughts[index])
        content = "".join(texts.get(index, ()))
        choice.content = (content.strip() or None) if choice.tool_calls else content
    return TurnAnswer([choices[i] for i in sorted(choices)], usage)


async def answer_turn(engine: EngineAPI, prepared: PreparedTurn) -> TurnAnswer:
    """Run ``prepared`` on ``engine`` and return its whole answer."""
    try:
        completion = await engine.chat(prepared.messages, **prepared.call)
    except LLMError as exc:
        prepared.turn.rename(exc)
        raise
    splitter = TurnSplitter.of(prepared)
    events: list[TurnEvent] = []
    for choice in completion.choices:
        events += splitter.on_delta(Delta(choice.index, choice.text, choice.token_ids, choice.logprobs,
                                          choice.finish_reason, stop=choice.stop))
    events.append(TurnUsage.of(completion.usage))
    return gather(events)
