"""Engine log-probabilities -> OpenAI's two layouts (chat's per-token objects, completions' columns)."""

from __future__ import annotations

from ...engine.outputs import TokenLogprob
from .types.chat import ChatLogprobs, TokenLogprobOut, TopLogprobOut
from .types.completions import CompletionLogprobs


def chat_logprobs(logprobs: list[TokenLogprob]) -> ChatLogprobs:
    """``{"content": [{token, logprob, bytes, top_logprobs}]}`` for a chat choice or chunk."""
    return ChatLogprobs(
        content=[
            TokenLogprobOut(
                token=lp.token,
                logprob=lp.logprob,
                bytes=list(lp.bytes),
                top_logprobs=[
                    TopLogprobOut(token=top.token, logprob=top.logprob, bytes=list(top.bytes))
                    for top in lp.top_logprobs
                ],
            )
            for lp in logprobs
        ]
    )


def completion_logprobs(logprobs: list[TokenLogprob], text_offset: int) -> CompletionLogprobs:
    """``{tokens, token_logprobs, top_logprobs, text_offset}``; offsets count from ``text_offset``."""
    offsets = []
    for lp in logprobs:
        offsets.append(text_offset)
        text_offset += len(lp.token)
    return CompletionLogprobs(
        tokens=[lp.token for lp in logprobs],
        token_logprobs=[lp.logprob for lp in logprobs],
        top_logprobs=[{top.token: top.logprob for top in lp.top_logprobs} for lp in logprobs],
        text_offset=offsets,
    )
