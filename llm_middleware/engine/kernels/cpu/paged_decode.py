"""Decode attention on the CPU read straight from the paged KV cache, through numba: the CPU's ``paged_decode``.

A decode step's rows have one query token each.  Attending with PyTorch ops first copies every
row's context blocks together; these kernels walk each row's block table instead, so the context
is read once, in place.  Scores, softmax (with ``numba_support.exp``) and the weighted values are
three kernels, which ``decode_step`` also runs inside its one-call step.  A layer's sliding window
narrows each row's walk; soft-capping bends the scores and sinks join the softmax
(``attention.paged.AttentionVariant``).  ``reproduces`` checks them against dense attention on a
probe (compiling them) while the model loads.
"""

from __future__ import annotations

import logging

import torch

from .numba_support import jit, numba, numpy_of

if numba is not None:
    import numpy as np

    from .numba_support import OPTIONS, exp, narrow, widen

    @numba.njit(inline="always", **OPTIONS)
    def _first(length, window):  # noqa: ANN001, ANN202
        """The first position a row of ``length`` tokens attends within a sliding ``window`` (0: none)."""
        return length - window if 0 < window < length else 0

    _NO_SINKS = np.empty(0, np.float32)

logger = logging.getLogger("llm_middleware")


@jit
def _scores(rows, heads, k_cache, tables, lengths, window, scale, softcap, block_size, scores):  # noqa: ANN001, ANN202
    """``scale * q[b, h] · k[t]`` over row ``b``'s window into ``scores [B, H, width]`` (elsewhere: unset).

    Query head ``h`` of row ``b`` is ``rows[b, h * D : (h + 1) * D]``.  Each cached token's keys
    (every KV head's, side by side) are read once, in the order they lie in their block.  A
    ``softcap`` above 0 bends each score into ``softcap * tanh(score / softcap)``.
    """
    batch = rows.shape[0]
    kv_heads, dim = k_cache.shape[1], k_cache.shape[2]
    group = heads // kv_heads
    scale = np.float32(scale)
    softcap = np.float32(softcap)
    for b in numba.prange(batch):
        first = _first(lengths[b], window)
        for t in range(first, lengths[b]):
            slot = tables[b, t // block_size] * block_size + t % block_size
            for h in range(kv_heads):
                for g in range(group):
                    head = h * group + g
                    acc = np.float32(0.0)
                    for d in range(dim):
                        acc += widen(rows[b, head * dim + d]) * widen(k_cache[slot, h, d])
                    scores[b, head, t] = acc * scale
        if softcap > 0:  # a pass of its own: a branch among the products slowed them by a sixth
            for head in range(heads):
                for t in range(first, lengths[b]):
                    scores[b, head, t] = softcap * np.tanh(scores[b, head, t] / softcap)


@jit
def _softmax(scores, lengths, window, sinks):  # noqa: ANN001, ANN202
    """Softmax in place over each row's window of its first ``lengths[b]`` scores.

    ``sinks [H]`` (or empty: none) adds each head's sink logit to the softmax as a key without a value.
    """
    batch, heads = scores.shape[0], scores.shape[1]
    for task in numba.prange(batch * heads):
        b, head = task // heads, task % heads
        first = _first(lengths[b], window)
        # Loops from 0 over the row's slice vectorise; loops from ``first`` do not.
        row = scores[b, head, first : lengths[b]]
        peak = np.float32(-np.inf)
        for t in range(row.shape[0]):
            peak = max(peak, row[t])
        if sinks.shape[0]:
            peak = max(peak, sinks[head])
        total = np.float32(0.0)
        for t in range(row.shape[0]):
            e = exp(row[t] - peak)
            row[t] = e
            total += e
        if sinks.shape[0]:
            total += exp(sinks[head] - peak)
        inverse = np.float32(1.0) / total
        for t in range(row.shape[0]):
            row[t] *= inverse


@jit
def _weighted_values(probs, v_cache, tables, lengths, window, block_size, out):  # noqa: ANN001, ANN202
    """``Σ_t probs[b, h, t] · v[t]`` over row ``b``'s window into ``out [B, H * D]``, summed in float32
    and rounded once to ``out``'s element type."""
    batch, heads = probs.shape[0], probs.shape[1]
    kv_heads, dim = v_cache.shape[1], v_cache.shape[2]
    group = heads // kv_heads
    for b in numba.prange(batch):
        acc = np.zeros((heads, dim), np.float32)
        for t in range(_first(lengths[b], window), lengths[b]):
            slot = tables[b, t // block_size] * block_size + t % block_size
            for h in range(kv_heads):
                for g in range(group):
                    head = h * group + g
                    weight = probs[b, head, t]
                    for d in range(dim):
                        acc[head, d] += weight * widen(v_cache[slot, h, d])
        for head in range(heads):
            for d in range(dim):
                out[b, head * dim + d] = narrow(acc[head, d], out)


def decode_attention(rows: torch.Tensor, heads: int, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                     block_size: int, *, window: int | None = None, softcap: float | None = None,
                     sinks: torch.Tensor | None = None) -> torch.Tensor:
    """One query token per row over its cached context: ``[B, 1, H, D]`` in the query's dtype.

    ``rows [B, W]`` (contiguous) holds each row's query heads first, one after another: a step's
    query ``[B, H * D]``, or its fused q/k/v projection as it is.  ``block_tables [B, max_blocks]``
    and ``context_lens [B]`` are int64 CPU tensors; the new token's key and value are already
    in the cache.  ``window``, ``softcap`` and ``sinks [H]``: as ``attention.paged.AttentionVariant``'s.
    """
    batch, dim = rows.shape[0], k_cache.shape[2]
    width = block_tables.shape[1] * block_size
    work = batch * heads * width
    tables, lengths = block_tables.numpy(), context_lens.numpy()
    scores = np.empty((batch, heads, width), np.float32)
    out = torch.empty(batch, 1, heads, dim, dtype=rows.dtype)
    sink_logits = sinks.detach().float().numpy() if sinks is not None else _NO_SINKS
    _scores(work, numpy_of(rows), heads, numpy_of(k_cache), tables, lengths, window or 0, scale, softcap or 0.0,
            block_size, scores)
    _softmax(work, scores, lengths, window or 0, sink_logits)
    _weighted_values(work, scores, numpy_of(v_cache), tables, lengths, window or 0, block_size,
                     numpy_of(out.view(batch, -1)))
    return out


def reproduces() -> bool:
    """Compile the kernels (or load them from the disk cache) and check them against dense attention.

    False where numba is missing or its kernels fail or disagree (a threading layer that cannot
    load, say): decode rows then attend through gathered blocks.
    """
    if numba is None:
        return False
    generator = torch.Generator().manual_seed(0)
    bs, kv_heads, heads, dim = 4, 2, 4, 8
    tables, lengths = [[3, 0], [1, 4]], [7, 5]
    table_t, lengths_t = torch.tensor(tables), torch.tensor(lengths)
    caches = [torch.randn(6 * bs + 1, kv_heads, dim, generator=generator) for _ in range(2)]
    query = torch.randn(2, heads, 1, dim, generator=generator)
    sinks = torch.randn(heads, generator=generator)
    # bfloat16 inputs are exact in float32 and the result is rounded once: within one rounding.
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        k_cache, v_cache, q = (t.to(dtype) for t in (*caches, query))
        rows = q.reshape(2, heads * dim)
        try:
            # Both forms of each kernel compile now; the result is checked in the form decode rows run.
            scores = np.zeros((2, heads, 2 * bs), np.float32)
            _scores.warm(numpy_of(rows), heads, numpy_of(k_cache), table_t.numpy(), lengths_t.numpy(), 0, 0.5, 0.0, bs,
                         scores)
            _softmax.warm(scores, lengths_t.numpy(), 0, _NO_SINKS)
            _weighted_values.warm(scores, numpy_of(v_cache), table_t.numpy(), lengths_t.numpy(), 0, bs,
                                  np.zeros((2, heads * dim), numpy_of(rows).dtype))
            plain = decode_attention(rows, heads, k_cache, v_cache, table_t, lengths_t, 0.5, bs)
            # A sliding window of 3, scores capped at 2, and sinks.
            bent = decode_attention(rows, heads, k_cache, v_cache, table_t, lengths_t, 0.5, bs, window=3, softcap=2.0,
                                    sinks=sinks)
        except Exception as exc:  # noqa: BLE001 - any failure means: attend through PyTorch ops
            logger.warning("CPU decode attention kernels unavailable, using PyTorch ops: %r", exc)
            return False
        for got, window, softcap, sink in ((plain, 0, None, None), (bent, 3, 2.0, sinks)):
            for row, (blocks, n) in enumerate(zip(tables, lengths)):
                first = max(0, n - window) if window else 0
                slots = torch.tensor([blocks[p // bs] * bs + p % bs for p in range(first, n)])
                keys, values = (c[slots].float().transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
                                for c in (k_cache, v_cache))
                logits = q[row].float() @ keys.transpose(1, 2) * 0.5  # [H, 1, n]
                if softcap is not None:
                    logits = softcap * torch.tanh(logits / softcap)
                if sink is not None:
                    logits = torch.cat([logits, sink.view(heads, 1, 1)], -1)
                expected = torch.softmax(logits, -1)[..., : len(slots)] @ values  # [H, 1, D]
                if got.dtype != dtype or not torch.allclose(got[row].float(), expected.transpose(0, 1),
                                                            rtol=tolerance, atol=tolerance):
                    logger.warning("CPU decode attention kernels disagree with PyTorch ops here; not using them")
                    return False
    return True
