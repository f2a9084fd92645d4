"""Markers that structure a model's output: where tool calls and reasoning begin and end.

Many tokenizers register them as special tokens (Hermes-2-Pro's ``<tool_call>``, Mistral's
``[TOOL_CALLS]``, Llama 3.1's ``<|python_tag|>``, Qwen3's ``<think>``), which decoding with
special tokens skipped would drop.  The engine keeps their text in the output, and the parsers
above it find them whether the tokenizer spells them as one special token, one plain token or
several pieces.
"""

from __future__ import annotations

HERMES_START = "<tool_call>"
HERMES_END = "</tool_call>"
MISTRAL_START = "[TOOL_CALLS]"
MISTRAL_ARGS = "[ARGS]"
LLAMA_START = "<|python_tag|>"
THINK_START = "<think>"
THINK_END = "</think>"

#: The spellings of a reasoning block's start and end that chat templates use, most common first
#: (``<think>``: Qwen3, QwQ, DeepSeek-R1 and most open reasoning models; ByteDance Seed's; Cohere's).
REASONING_MARKERS: tuple[tuple[str, str], ...] = (
    (THINK_START, THINK_END),
    ("<seed:think>", "</seed:think>"),
    ("<|START_THINKING|>", "<|END_THINKING|>"),
)

#: Every marker whose text the output keeps, special token or not.
OUTPUT_MARKERS = frozenset(
    {HERMES_START, HERMES_END, MISTRAL_START, MISTRAL_ARGS, LLAMA_START}
    | {marker for pair in REASONING_MARKERS for marker in pair}
)
