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

    ``end_token_id`` is the end marker's token id where the vocabulary has it as one token.
    """

    start: str
    end: str
    begins: Begins
    end_token_id: int | None = None


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


def marker_token_id(tokenizer: Any, marker: str) -> int | None:
    """The id of ``marker`` where it is one added token of ``tokenizer``."""
    return tokenizer.get_added_vocab().get(marker)


def output_begins(prompt: str, start: str, end: str) -> Begins:
    """Where the output after ``prompt`` begins, from the last reasoning marker in it."""
    opened, closed = prompt.rfind(start), prompt.rfind(end)
    if opened < 0 and closed < 0:
        return "either"
    return "reasoning" if opened > closed else "answer"
