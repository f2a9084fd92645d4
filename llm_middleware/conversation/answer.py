"""A generated choice as every protocol reports it: content text and tool calls, whole or as it streams.

The engine writes tool calls into the text (``<tool_call>...</tool_call>`` and the other formats
:mod:`.tool_calls` reads); when a request offers tools, each choice's text is split into content
and numbered calls here, and each protocol renders the parts in its own shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from .tool_calls import ParsedToolCall, ToolCallParser, new_tool_call_id, parse_tool_calls


@dataclass(slots=True, frozen=True)
class ToolSettings:
    """How tool calls in the output are treated: the offered names, and whether a choice may make
    several calls (``parallel``; otherwise only its first call counts)."""

    names: frozenset[str]
    parallel: bool


@dataclass(slots=True, frozen=True)
class ToolCall:
    """A call found in a choice's output: its number within the choice, a new id, and
    ``arguments`` as a compact JSON object string."""

    index: int
    id: str
    name: str
    arguments: str


def _numbered(calls: list[ParsedToolCall], first: int, tools: ToolSettings) -> list[ToolCall]:
    if not tools.parallel:
        calls = calls[: max(0, 1 - first)]
    return [ToolCall(first + k, new_tool_call_id(), call.name, call.arguments) for k, call in enumerate(calls)]


def split_choice(text: str, tools: ToolSettings) -> tuple[str | None, list[ToolCall]]:
    """A whole choice's text as its content (None when it held only calls) and its tool calls."""
    content, calls = parse_tool_calls(text, tools.names)
    return content, _numbered(calls, 0, tools)


def finish_reason(reason: str, made_calls: bool) -> str:
    """A choice that stopped after making calls finished for ``tool_calls``."""
    return "tool_calls" if made_calls and reason == "stop" else reason


class ChoiceSplitter:
    """Splits one streamed choice into content pieces and tool calls, as its text arrives.

    Text that may start a call is held back until it is decided; a call that does not parse is
    given back as content.
    """

    def __init__(self, tools: ToolSettings) -> None:
        self._tools = tools
        self._parser = ToolCallParser(tools.names)
        self._calls = 0

    @property
    def made_calls(self) -> bool:
        """True once the choice made a tool call."""
        return self._calls > 0

    def feed(self, text: str, *, last: bool = False) -> list[str | ToolCall]:
        """The parts that ``text`` completes; ``last`` flushes what was held back."""
        items = self._parser.feed(text)
        if last:
            items += self._parser.finish()
        parts: list[str | ToolCall] = []
        for item in items:
            if isinstance(item, str):
                if item:
                    parts.append(item)
                continue
            for call in _numbered([item], self._calls, self._tools):
                parts.append(call)
                self._calls += 1
        return parts
