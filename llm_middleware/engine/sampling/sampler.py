"""Batched sampling with per-row parameters: one set of tensor ops for the whole step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..scheduling.sequence import Sequence
from .grammar import apply_grammar_masks


@dataclass(slots=True)
class SampleResult:
    """Chosen tokens ``[N]``, and for rows that asked: chosen-token logprobs and the top-k alternatives."""

    tokens: list[int]
    logprobs: list[float] | None
    top_ids: list[list[int]] | None
    top_logprobs: list[list[float]] | None


def _tensor(values: list, *, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A small tensor of per-row values on ``device``, queued without waiting for the device.

    ``torch.tensor(values, device=cuda)`` would wait for the running step while holding the GIL.
    """
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


@dataclass(slots=True)
class Draws:
    """One step's draws, still on the device: ``tokens`` feeds the next step before the host reads them.

    The copies to the host are queued when the draws are made; ``fetch`` waits for them.
    """

    tokens: torch.Tensor  # [N] on the logits' device
    _host: list[torch.Tensor]
    _ready: torch.cuda.Event | None

    def fetch(self) -> SampleResult:
        """The draws as Python lists, after one wait for the device.

        On CUDA the wait is ``Event.synchronize``, which releases the GIL: the event loop
        serving the streams runs while the GPU finishes (``tolist()`` on a GPU tensor would
        hold the GIL for the whole step).
        """
        if self._ready is not None:
            self._ready.synchronize()
        # tokens, then (when asked) chosen-token logprobs, then (when asked) top ids and logprobs
        tokens, chosen, top_ids, top_lp = [t.tolist() for t in self._host] + [None] * (4 - len(self._host))
        return SampleResult(tokens, chosen, top_ids, top_lp)


def logit_bias_tensors(logit_bias: dict[int, float] | None, width: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A request's ``logit_bias`` as token ids ``[K]`` and values ``[K]``, made once when it is prepared (on
    the CPU: the sampler moves them to the logits' device at their first step).  Ids outside the logits'
    ``width`` are dropped."""
    pairs = [(token, value) for token, value in (logit_bias or {}).items() if 0 <= token < width]
    if not pairs:
        return None
    return torch.tensor([t for t, _ in pairs], dtype=torch.long), torch.tensor([v for _, v in pairs], dtype=torch.float32)


def token_tensor(ids: list[int], width: int) -> torch.Tensor:
    """Token ids ``[K]`` (those within the logits' ``width``), made once when a request is prepared."""
    return torch.tensor(sorted({t for t in ids if 0 <= t < width}), dtype=torch.long)


def feed_draws(ids: torch.Tensor, sources: torch.Tensor, tokens: torch.Tensor) -> None:
    """Fill in place the ``ids`` whose value is still on the device: ``tokens[sources[i]]`` where
    ``sources[i] >= 0`` (the previous step's draws, read on the device without a host round trip)."""
    tokens = tokens.to(ids.device, non_blocking=True)  # draws sit with the output layer, ids with the embeddings
    ids.copy_(torch.where(sources >= 0, tokens[sources.clamp_min(0)], ids))


def _draws(*tensors: torch.Tensor) -> Draws:
    """Queue the copies of ``tensors`` (tokens first) to the host without waiting for them."""
    if tensors[0].device.type != "cuda":
        return Draws(tensors[0], list(tensors), None)
    host = [t.to("cpu", non_blocking=True) for t in tensors]  # pinned destinations
    ready = torch.cuda.current_stream(tensors[0].device).record_event()
    return Draws(tensors[0], host, ready)


class Sampler:
    """Applies penalties, biases, temperature, top-k/top-p/min-p and draws one token per row.

    Randomness comes from exponential noise (``argmax(p / q)``, ``q ~ Exp(1)``, the Gumbel-max
    trick) so that a seeded row draws its noise from its own generator: its tokens do not
    depend on which other requests share the batch.
    """

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> Draws:
        """Draw one token per row of ``logits`` (one row per sequence); the host reads them with ``fetch``."""
        # logits: [N, V]
        logits = logits.float()
        n, vocab = logits.shape
        device = logits.device
        want_logprobs = any(s.params.logprobs for s in seqs)
        raw_logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None

        self._apply_penalties(logits, seqs)
        self._apply_bans_and_biases(logits, seqs)
        if any(s.matcher is not None for s in seqs):
            apply_grammar_masks(logits, [s.matcher for s in seqs])

        greedy = [s.params.greedy for s in seqs]
        if all(greedy):
            tokens = logits.argmax(dim=-1)
        else:
            temps = _tensor([s.params.temperature or 1.0 for s in seqs], device=device).clamp_min(1e-5)
            scaled = logits / temps[:, None]
            self._truncate(scaled, seqs)
            probs = torch.softmax(scaled, dim=-1)
            noise = torch.empty_like(probs).exponential_(generator=self.generator)
            for i, s in enumerate(seqs):
                if s.generator is not None:
                    noise[i] = torch.empty(vocab, device=device).exponential_(generator=s.generator)
            sampled = (probs / noise).argmax(dim=-1)
            greedy_mask = _tensor(greedy, device=device)
            tokens = torch.where(greedy_mask, logits.argmax(dim=-1), sampled)

        if raw_logprobs is None:
            return _draws(tokens)
        chosen = raw_logprobs.gather(1, tokens[:, None]).squeeze(1)
        k = max(s.params.top_logprobs for s in seqs)
        if k:
            top_lp, top_ids = raw_logprobs.topk(k, dim=-1)
            return _draws(tokens, chosen, top_ids, top_lp)
        return _draws(tokens, chosen)

    def _apply_penalties(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        rows = [i for i, s in enumerate(seqs) if s.params.penalized]
        if not rows:
            return
        vocab = logits.shape[1]
        for i in rows:
            p = seqs[i].params
            row = logits[i]
            out = _tensor(seqs[i].output_ids, dtype=torch.long, device=logits.device)
            if (p.repetition_penalty or 1.0) != 1.0:
                # Like transformers: every token seen (prompt and output) is made less likely.
                seen = _tensor(sorted(set(seqs[i].token_ids)), dtype=torch.long, device=logits.device)
                vals = row[seen]
                row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
            if (p.presence_penalty or p.frequency_penalty) and out.numel():
                counts = torch.bincount(out, minlength=vocab).to(row.dtype)
                row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)

    @staticmethod
    def _apply_bans_and_biases(logits: torch.Tensor, seqs: list[Sequence]) -> None:
        # The tensors were made when each request was prepared; the first step moves them to the device
        # (without waiting for it), later steps find them there.
        device = logits.device
        for i, s in enumerate(seqs):
            request = s.request
            if request.bias is not None:
                ids, values = request.bias = tuple(t.to(device, non_blocking=True) for t in request.bias)
                logits[i].index_add_(0, ids, values)
            if request.min_tokens_ban is not None and s.num_output_tokens < s.params.min_tokens:
                request.min_tokens_ban = banned = request.min_tokens_ban.to(device, non_blocking=True)
                logits[i].index_fill_(0, banned, float("-inf"))  # a list index would wait for the device

    @staticmethod
    def _truncate(scaled: torch.Tensor, seqs: list[Sequence]) -> None:
        """Mask tokens outside each row's top-k, top-p nucleus and min-p floor (in place)."""
        top_k = [s.params.top_k if s.params.top_k and s.params.top_k > 0 else 0 for s in seqs]
        top_p = [s.params.top_p if s.params.top_p is not None else 1.0 for s in seqs]
        min_p = [s.params.min_p or 0.0 for s in seqs]
        device = scaled.device
        if any(top_k) or any(p < 1.0 for p in top_p):
            sorted_logits, order = scaled.sort(dim=-1, descending=True)
            vocab = scaled.shape[1]
            ranks = torch.arange(vocab, device=device)[None, :]
            k = _tensor([k or vocab for k in top_k], device=device)[:, None]
            remove = ranks >= k
            probs = torch.softmax(sorted_logits.masked_fill(remove, float("-inf")), dim=-1)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            before = probs.cumsum(dim=-1) - probs
            remove |= before >= _tensor(top_p, device=device)[:, None]
            scaled.scatter_(1, order, sorted_logits.masked_fill(remove, float("-inf")))
        if any(min_p):
            probs = torch.softmax(scaled, dim=-1)
            floor = _tensor(min_p, device=device)[:, None] * probs.max(dim=-1, keepdim=True).values
            scaled.masked_fill_(probs < floor, float("-inf"))
