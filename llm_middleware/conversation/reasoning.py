"""Split one choice's output into reasoning and answer, as it streams.

A model whose template thinks writes its reasoning between two markers (``<think>`` and
``</think>``) before the answer; :class:`~..engine.text.reasoning.ReasoningFormat` says which
markers and where the output begins.  The markers themselves are dropped, and so is the blank
space that opens the reasoning and the answer after it (an output without a reasoning block is
handed out as it is).  Text that may be the start of a marker is held
back until it is decided.  Tool-call parsing and JSON output see the answer only.
"""

from __future__ import annotations

from typing import Literal

from ..engine.text.reasoning import ReasoningFormat

Part = Literal["reasoning", "answer"]


def _held(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that could begin ``marker``."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class ReasoningSplitter:
    """Feed a choice's text as it arrives; get ``(part, text)`` pieces in order.

    ``fmt`` None means the model does not reason in marked blocks: everything is answer.
    """

    def __init__(self, fmt: ReasoningFormat | None) -> None:
        self._fmt = fmt
        # "open": the output may still open a reasoning block; "reasoning"/"answer": inside that part.
        self._state: Literal["open", "reasoning", "answer"]
        if fmt is None or fmt.begins == "answer":
            self._state = "answer"
        else:
            self._state = "reasoning" if fmt.begins == "reasoning" else "open"
        self._pending = ""
        # Blank space at the start of this part is dropped: true inside reasoning and after it.
        self._at_start = self._state == "reasoning"

    @property
    def reasoning(self) -> bool:
        """True while the output is (or may still be) inside the reasoning."""
        return self._state != "answer"

    def feed(self, text: str, *, last: bool = False) -> list[tuple[Part, str]]:
        """The pieces ``text`` decides; ``last`` hands out what is held back."""
        if self._fmt is None:
            return [("answer", text)] if text else []
        self._pending += text
        out: list[tuple[Part, str]] = []
        while self._step(out, last):
            pass
        return out

    def _step(self, out: list[tuple[Part, str]], last: bool) -> bool:
        """Hand out what can be decided; True when the state changed and there is more to look at."""
        fmt = self._fmt
        assert fmt is not None
        if self._state == "open":
            rest = self._pending.lstrip()
            if rest.startswith(fmt.start):
                self._state, self._pending, self._at_start = "reasoning", rest[len(fmt.start):], True
                return True
            if (fmt.start.startswith(rest) or not rest) and not last:
                return False  # may still open a block
            self._state, self._at_start = "answer", False
            return True
        if self._state == "reasoning":
            if self._at_start:  # a model may repeat the start marker the prompt already opened
                rest = self._pending.lstrip()
                if rest.startswith(fmt.start):
                    self._pending = rest[len(fmt.start):]
                elif fmt.start.startswith(rest) and rest and not last:
                    return False
            end = self._pending.find(fmt.end)
            if end >= 0:
                self._emit(out, "reasoning", self._pending[:end])
                self._state, self._pending, self._at_start = "answer", self._pending[end + len(fmt.end):], True
                return True
            keep = 0 if last else _held(self._pending, fmt.end)
            self._emit(out, "reasoning", self._pending[: len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep:]
            return False
        self._emit(out, "answer", self._pending)
        self._pending = ""
        return False

    def _emit(self, out: list[tuple[Part, str]], part: Part, text: str) -> None:
        if self._at_start:
            text = text.lstrip()
        if text:
            self._at_start = False
            out.append((part, text))
