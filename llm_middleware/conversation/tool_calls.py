"""Find tool calls in a model's text output, whole or as it streams.

Three formats are recognised, whichever the model writes:

- Hermes / Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block per call;
- Mistral: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``
  (or ``[TOOL_CALLS]name[ARGS]{...}`` in newer tokenizers);
- Llama 3 JSON: the whole output is ``{"name": ..., "parameters": {...}}`` (several separated by
  ``;``), optionally after ``<|python_tag|>``.  Without that tag, a bare JSON object only counts as
  a call when its name is one of the offered tools, so plain JSON answers stay content.

The markers are found in the text whether the tokenizer has them as special tokens or not: the
engine keeps their text (``llm_middleware.markers``).

Text before a call is content.  Once a call starts, the text is held back until the call can
be parsed; a call that does not parse is given back as content rather than lost.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from ..markers import HERMES_END, HERMES_START, LLAMA_START, MISTRAL_ARGS, MISTRAL_START

_MARKERS = (HERMES_START, MISTRAL_START, LLAMA_START)

_ID_ALPHABET = string.ascii_letters + string.digits
_json = json.JSONDecoder()


@dataclass(slots=True)
class ParsedToolCall:
    """A tool call found in the output; ``arguments`` is a compact JSON object string."""

    name: str
    arguments: str


def new_tool_call_id() -> str:
    """An id in OpenAI's style (``call_`` and 24 letters or digits)."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def _call_from_object(obj: Any) -> ParsedToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments pre-encoded
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ParsedToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _json_values(text: str, separators: str) -> list[Any] | None:
    """Every JSON value in ``text``, separated by whitespace or ``separators``; None if anything else is there."""
    values, pos = [], 0
    while True:
        while pos < len(text) and (text[pos].isspace() or text[pos] in separators):
            pos += 1
        if pos == len(text):
            return values
        try:
            value, pos = _json.raw_decode(text, pos)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the decoder goes
            return None
        values.append(value)


def _parse_objects(text: str) -> list[ParsedToolCall] | None:
    """Calls written as JSON objects or arrays of objects (Llama 3, Mistral); None unless all parse."""
    values = _json_values(text, ";,")
    if not values:
        return None
    objects = [item for value in values for item in (value if isinstance(value, list) else [value])]
    calls = [_call_from_object(obj) for obj in objects]
    return None if any(call is None for call in calls) else calls  # type: ignore[return-value]


def _parse_mistral(text: str) -> list[ParsedToolCall] | None:
    if MISTRAL_ARGS not in text:
        return _parse_objects(text)
    # name[ARGS]{...}[TOOL_CALLS]name[ARGS]{...}
    calls = []
    for part in text.split(MISTRAL_START):
        name, sep, args = part.partition(MISTRAL_ARGS)
        values = _json_values(args, "") if sep else None
        if not name.strip() or values is None or len(values) != 1 or not isinstance(values[0], dict):
            return None
        calls.append(ParsedToolCall(name.strip(), json.dumps(values[0], ensure_ascii=False)))
    return calls


def _hold_length(text: str) -> int:
    """Length of the longest end of ``text`` that could begin a marker (held until it is decided)."""
    for size in range(min(len(text), max(map(len, _MARKERS)) - 1), 0, -1):
        tail = text[-size:]
        if any(marker.startswith(tail) for marker in _MARKERS):
            return size
    return 0


class ToolCallParser:
    """Incremental parser: :meth:`feed` text as it arrives, then :meth:`finish`.

    Both return, in order, content strings and :class:`ParsedToolCall` objects.  Whitespace at
    the start and right after a call is held back, so that it never becomes content of its own.
    """

    def __init__(self, tool_names: Collection[str] = ()) -> None:
        self._tool_names = tool_names
        self._pending = ""  # text not yet handed out
        self._mode: str | None = None  # the marker whose call is being read, "{" for bare JSON
        self._at_boundary = True  # nothing but whitespace since the start or the last call
        self.calls = 0

    def feed(self, text: str) -> list[str | ParsedToolCall]:
        """Take more output; return what can be decided now."""
        self._pending += text
        out: list[str | ParsedToolCall] = []
        while self._pending:
            if self._mode is None and not self._scan_text(out):
                break
            if self._mode == HERMES_START and not self._take_hermes_block(out):
                break
            if self._mode in (MISTRAL_START, LLAMA_START, "{"):
                break  # these formats end with the output
        return out

    def finish(self) -> list[str | ParsedToolCall]:
        """The output ended: parse what is held back, or give it back as content."""
        out: list[str | ParsedToolCall] = []
        text, self._pending = self._pending, ""
        if self._mode is None:
            if text and not (self._at_boundary and self.calls and text.isspace()):
                out.append(text)
            return out
        if self._mode == HERMES_START:
            calls = _parse_objects(text[len(HERMES_START) :])
        elif self._mode == MISTRAL_START:
            calls = _parse_mistral(text[len(MISTRAL_START) :])
        elif self._mode == LLAMA_START:
            calls = _parse_objects(text[len(LLAMA_START) :])
        else:  # bare JSON: only a call when every name is an offered tool
            calls = _parse_objects(text)
            if calls and any(call.name not in self._tool_names for call in calls):
                calls = None
        if calls:
            self.calls += len(calls)
            out.extend(calls)
        else:
            out.append(text)
        return out

    def _scan_text(self, out: list[str | ParsedToolCall]) -> bool:
        """Hand out content up to the next marker; True when a call starts in what is pending."""
        text = self._pending
        if self._at_boundary and not self.calls and text.lstrip().startswith("{"):
            self._mode = "{"
            return True
        starts = [(text.find(m), m) for m in _MARKERS if m in text]
        if starts:
            pos, marker = min(starts)
            content = text[:pos]
            if content and not (self._at_boundary and content.isspace()):
                out.append(content)
            self._mode, self._pending = marker, text[pos:]
            return True
        hold = len(text) - _hold_length(text)
        content = text[:hold]
        if not content or (self._at_boundary and content.isspace()):
            return False  # nothing decided yet: keep holding all of it
        out.append(content)
        self._at_boundary = False
        self._pending = text[hold:]
        return False

    def _take_hermes_block(self, out: list[str | ParsedToolCall]) -> bool:
        """Hand out a closed ``<tool_call>`` block; True when one was taken."""
        end = self._pending.find(HERMES_END)
        if end < 0:
            return False
        block = self._pending[: end + len(HERMES_END)]
        calls = _parse_objects(block[len(HERMES_START) : end])
        if calls:
            out.extend(calls)
            self.calls += len(calls)
            self._at_boundary = True
        else:
            out.append(block)
            self._at_boundary = False
        self._mode, self._pending = None, self._pending[end + len(HERMES_END) :]
        return True


def parse_tool_calls(text: str, tool_names: Collection[str] = ()) -> tuple[str | None, list[ParsedToolCall]]:
    """Split a whole output into content (None when only calls were written) and tool calls."""
    parser = ToolCallParser(tool_names)
    items = parser.feed(text) + parser.finish()
    calls = [item for item in items if isinstance(item, ParsedToolCall)]
    content = "".join(item for item in items if isinstance(item, str))
    if calls:
        content = content.strip()
    return (content or None) if calls else content, calls
