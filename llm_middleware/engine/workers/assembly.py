"""A step's draws turned into each choice's progress and deltas: its tokens, why it ends, its text and logprobs."""

from __future__ import annotations

from ..outputs import Delta, TokenLogprob, TopLogprob
from ..sampling.sampler import SampleResult
from ..scheduling.sequence import Sequence
from ..text.codec import TextCodec


class OutputAssembler:
    """Records drawn tokens and decides each choice's end: a stop token (past ``min_tokens``), a grammar
    complete, a stop string, the length limit; then hands out what is new as a :class:`Delta`."""

    def __init__(self, text: TextCodec) -> None:
        self.text = text

    def accept(self, seq: Sequence, pos: int, result: SampleResult, row: int) -> None:
        """Put the draw of ``row`` at ``seq.token_ids[pos]`` and set ``seq.finish_reason`` where it ends there."""
        token = result.tokens[row]
        params = seq.params
        seq.token_ids[pos] = token
        num_tokens = pos + 1  # later steps may have appended pending tokens
        request = seq.request
        request.pending_ids[seq.index].append(token)
        if params.logprobs and result.logprobs is not None:
            request.pending_logprobs[seq.index].append(self._logprob_entry(token, row, result, params.top_logprobs))
        is_stop_token = token in request.stop_ids
        if seq.matcher is not None:
            seq.matcher.consume_token(token)
        if is_stop_token and num_tokens - seq.num_prompt_tokens > params.min_tokens - 1:
            seq.finish_reason = "stop"
        elif seq.matcher is not None and seq.matcher.is_stopped():
            seq.detokenizer.add(token)
            seq.finish_reason = "stop"  # the grammar is complete: nothing else may follow
        else:
            seq.detokenizer.add(token)
            if seq.detokenizer.stopped:
                seq.finish_reason = "stop"
            elif num_tokens >= seq.max_total_tokens:
                seq.finish_reason = "length"
        if seq.finish_reason is not None:
            del seq.token_ids[num_tokens:]  # draws launched after the last token are void

    def delta(self, seq: Sequence) -> Delta | None:
        """What ``seq`` has not handed out yet, or None while it waits for more tokens (part of a character
        or of a possible stop string); always a delta once the sequence finished."""
        request = seq.request
        finished = seq.finish_reason is not None
        text = seq.detokenizer.take(final=finished)
        want_logprobs = seq.params.logprobs
        if not (text or finished or (want_logprobs and request.pending_logprobs[seq.index])):
            return None
        delta = Delta(
            index=seq.index,
            text=text,
            token_ids=request.pending_ids[seq.index],
            logprobs=request.pending_logprobs[seq.index] if want_logprobs else None,
            finish_reason=seq.finish_reason,
            stop=seq.detokenizer.stop if finished else None,
        )
        request.pending_ids[seq.index] = []
        request.pending_logprobs[seq.index] = []
        return delta

    def _logprob_entry(self, token: int, row: int, result: SampleResult, top: int) -> TokenLogprob:
        assert result.logprobs is not None
        text = self.text
        tops: list[TopLogprob] = []
        if top and result.top_ids is not None and result.top_logprobs is not None:
            tops = [
                TopLogprob(t, text.piece(t), lp, text.token_bytes(t))
                for t, lp in zip(result.top_ids[row][:top], result.top_logprobs[row][:top])
            ]
        return TokenLogprob(token, text.piece(token), result.logprobs[row], tops, text.token_bytes(token))
