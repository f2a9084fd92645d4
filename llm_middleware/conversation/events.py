"""The ordered events of one turn, as every protocol renders them.

For each choice (``index``): reasoning and answer text as it is decided, tool calls as each one
closes, then :class:`ChoiceDone`; after every choice is done, one :class:`TurnUsage`.  Choices of
one turn interleave; the events of one choice keep their order.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.outputs import TokenLogprob, Usage
from .answer import ToolCall


@dataclass(slots=True, frozen=True)
class ReasoningDelta:
    """More of a choice's reasoning (the text between the template's reasoning markers)."""

    index: int
    text: str
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True, frozen=True)
class TextDelta:
    """More of a choice's answer text.  ``text`` is empty when only ``logprobs`` are new (the tokens'
    text is held back until it is known whether it starts a tool call or a marker)."""

    index: int
    text: str
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True, frozen=True)
class ToolCallMade:
    """A whole tool call found in a choice's answer."""

    index: int
    call: ToolCall
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True, frozen=True)
class ChoiceDone:
    """A choice ended: ``stop`` (end of text or a stop sequence), ``length`` (token limit) or
    ``tool_calls`` (it stopped after making calls).  ``stop_sequence`` is the stop string that ended
    it, where one did."""

    index: int
    finish_reason: str
    stop_sequence: str | None = None


@dataclass(slots=True, frozen=True)
class TurnUsage:
    """Token counts of the whole turn (all choices together); the last event.  ``cached_tokens`` of the
    prompt were served from the engine's prefix cache."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def of(cls, usage: Usage) -> TurnUsage:
        """The engine's counts as the turn's event."""
        return cls(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)

    def counts(self) -> Usage:
        """The turn's counts as the engine's :class:`Usage`."""
        return Usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)


TurnEvent = ReasoningDelta | TextDelta | ToolCallMade | ChoiceDone | TurnUsage
