"""How a model's chat template marks reasoning: its markers, and where a reply's output begins.

A template that thinks wraps the reasoning in a pair of markers (``<think>`` and ``</think>`` for
Qwen3).  Which pair a model uses is read from its tokenizer and template, not from its name: the
first known spelling (``markers.REASONING_MARKERS``) that the tokenizer registers as added tokens
or the template mentions.

Where the output begins depends on the generation prompt the template renders for a request's
variables (``enable_thinking``):

- it ends inside an open block (Qwen3-2507 Thinking, Qwen3.5, the thinking demo template): the
  output begins in the reasoning, and the end marker begins the answer (``"reasoning"``);
- it holds a closed block (Qwen3's template renders an empty one when thinking is switched off):
  the output is all answer (``"answer"``);
- neither (Qwen3's original template with thinking on): the model opens a block itself, if at
  all, at the start of its output (``"either"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ...markers import REASONING_MARKERS

Begins = Literal["reasoning", "answer", "either"]


@dataclass(frozen=True, slots=True)
class ReasoningFormat:
    """A model's reasoning markers and, for one request's template variables, where its output begins.

    ``marker_tokens``: each marker is one added token of the vocabulary (a grammar names it as a
    token, not as text).  ``grammar_sees_reasoning``: a ``guided`` grammar constrains the whole
    output, reasoning included, so it must let the reasoning through first; False where the engine
    keeps the reasoning apart before the grammar applies (an upstream's reasoning parser).
    """

    start: str
    end: str
    begins: Begins
    marker_tokens: bool = True
    grammar_sees_reasoning: bool = True


def reasoning_markers(tokenizer: Any) -> tuple[str, str] | None:
    """The reasoning markers of ``tokenizer``'s model: a known pair it has as added tokens or its chat
    template mentions; None when its model does not reason in marked blocks."""
    added = set(tokenizer.get_added_vocab())
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # several named templates
        template = "\n".join(template.values())
    for start, end in REASONING_MARKERS:
        if (start in added and end in added) or end in template:
            return start, end
    return None


def are_added_tokens(tokenizer: Any, *markers: str) -> bool:
    """Whether every one of ``markers`` is one added token of ``tokenizer`` (special or not)."""
    added = tokenizer.get_added_vocab()
    return all(marker in added for marker in markers)


def output_begins(prompt: str, start: str, end: str) -> Begins:
    """Where the output after ``prompt`` begins, from the last reasoning marker in it."""
    opened, closed = prompt.rfind(start), prompt.rfind(end)
    if opened < 0 and closed < 0:
        return "either"
    return "reasoning" if opened > closed else "answer"
