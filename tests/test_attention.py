"""Attention over the paged cache: the gather path (prompt chunks over a cached context), fresh prompts and the CPU
decode kernels, with sliding windows, soft-capped scores and sinks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from llm_middleware.engine.attention import paged as attention
from llm_middleware.engine.attention.kv_cache import KVCache
from llm_middleware.engine.attention.paged import AttentionMetadata, AttentionVariant, attend
from llm_middleware.engine.kernels.cpu import numba_support
from llm_middleware.engine.kernels.cpu import paged_decode as cpu_attention
from llm_middleware.engine.kernels.cpu import row_ops as cpu_ops


def _reference(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, scale: float,
               window: int | None = None, softcap: float | None = None,
               sinks: torch.Tensor | None = None) -> torch.Tensor:
    """One row's queries ``[H, S, D]`` at ``positions [S]`` over its keys and values ``[H, n, D]`` in float64,
    as transformers' eager attention computes them; ``[S, H, D]``."""
    scores = query.double() @ keys.double().transpose(1, 2) * scale  # [H, S, n]
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    key_pos = torch.arange(keys.shape[1])
    visible = key_pos[None, :] <= positions[:, None]
    if window is not None:
        visible &= key_pos[None, :] > positions[:, None] - window
    scores = scores.masked_fill(~visible, float("-inf"))
    if sinks is not None:
        scores = torch.cat([scores, sinks.double().view(-1, 1, 1).expand(-1, scores.shape[1], 1)], -1)
    probs = torch.softmax(scores, -1)[..., : keys.shape[1]]
    return (probs @ values.double()).transpose(0, 1)


def _row_context(cache: KVCache, blocks: list[int], n: int, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A row's first ``n`` cached keys and values, each KV head repeated for its query heads: ``[H, n, D]``."""
    bs, kv_heads = cache.block_size, cache.keys[0].shape[1]
    slots = torch.tensor([blocks[p // bs] * bs + p % bs for p in range(n)])
    return tuple(c[0][slots].transpose(0, 1).repeat_interleave(heads // kv_heads, 0) for c in (cache.keys, cache.values))


def _dense(cache: KVCache, query: torch.Tensor, table: list[list[int]], lens: list[int], scale: float,
           **variant: Any) -> torch.Tensor:
    """One query token per row over its context, in float64: ``[B, 1, H, D]``."""
    rows = []
    for row, (blocks, n) in enumerate(zip(table, lens)):
        keys, values = _row_context(cache, blocks, n, query.shape[1])
        rows.append(_reference(query[row], keys, values, torch.tensor([n - 1]), scale, **variant))
    return torch.stack(rows)


#: Sliding windows, soft-capped scores and sinks, alone and together (sinks: one logit per query head).
VARIANTS = {
    "plain": {},
    "window": {"window": 3},
    "softcap": {"softcap": 1.5},
    "sinks": {"sinks": torch.tensor([0.5, -1.0, 2.0, 0.0])},
    "all": {"window": 5, "softcap": 1.5, "sinks": torch.tensor([1.0, 0.0, -2.0, 3.0])},
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("new_tokens", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gathered_attention_matches_a_dense_reference(dtype: torch.dtype, new_tokens: int, variant: str) -> None:
    # Rows attend through out-of-order block tables with their own context lengths; 16-bit
    # inputs are computed in float32 on the CPU and returned in their own dtype.  One new token
    # a row (decode) takes the batched-product path, several (a prompt chunk) the fused kernel;
    # soft-capping and sinks take explicit products.
    gen = torch.Generator().manual_seed(0)
    bs, kv_heads, heads, dim = 4, 2, 4, 8
    cache = KVCache(num_layers=1, num_blocks=6, block_size=bs, num_kv_heads=kv_heads, head_dim=dim, dtype=dtype,
                    devices=[torch.device("cpu")])
    cache.keys[0].copy_(torch.randn(cache.keys[0].shape, generator=gen))
    cache.values[0].copy_(torch.randn(cache.values[0].shape, generator=gen))
    table = torch.tensor([[4, 1], [0, 5]])
    lens = [7, 5]
    # new token i of a row sits at position len - new_tokens + i and sees the keys up to it
    last = torch.tensor(lens)[:, None] - new_tokens + torch.arange(new_tokens)[None, :]  # [B, S]
    mask = (torch.arange(2 * bs)[None, None, :] <= last[:, :, None])[:, None]  # [B, 1, S, L]
    meta = AttentionMetadata(kv_cache=cache, slot_mapping=torch.tensor([0, 0]), gather_blocks=table, mask=mask,
                             causal_only=False, positions=last)
    query = torch.randn(2, heads, new_tokens, dim, generator=gen).to(dtype)
    options = VARIANTS[variant]
    out = attend(meta, 0, query, torch.empty(2, kv_heads, new_tokens, dim, dtype=dtype), None, None,
                 AttentionVariant(**options))
    assert out.shape == (2, new_tokens, heads, dim) and out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for row, (blocks, n) in enumerate(zip(table.tolist(), lens)):
        keys, values = _row_context(cache, blocks, n, heads)
        expected = _reference(query[row], keys, values, last[row], dim**-0.5, **options)
        torch.testing.assert_close(out[row].double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("split", [False, True], ids=["whole", "query-chunks"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fresh_prompts_attend_within_their_window(variant: str, split: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fresh prompts of one length attend among their own tokens: windowed, capped and sunk there too;
    # explicit scores (caps, sinks) are made a few queries at a time where they would be large.
    if split:
        monkeypatch.setattr(attention, "_EXPLICIT_SCORES", 2 * 4 * 9 * 2)  # two queries of both rows' 4 heads
    gen = torch.Generator().manual_seed(4)
    heads, kv_heads, seq, dim = 4, 2, 9, 8
    cache = KVCache(num_layers=1, num_blocks=1, block_size=4, num_kv_heads=kv_heads, head_dim=dim,
                    dtype=torch.float32, devices=[torch.device("cpu")])
    meta = AttentionMetadata(kv_cache=cache, slot_mapping=torch.tensor([0]), gather_blocks=None, mask=None,
                             causal_only=True)
    query, key, value = (torch.randn(2, h, seq, dim, generator=gen) for h in (heads, kv_heads, kv_heads))
    options = VARIANTS[variant]
    out = attend(meta, 0, query, key, value, 0.4, AttentionVariant(**options))
    for row in range(2):
        keys, values = (t[row].repeat_interleave(heads // kv_heads, 0) for t in (key, value))
        expected = _reference(query[row], keys, values, torch.arange(seq), 0.4, **options)
        torch.testing.assert_close(out[row].double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not cpu_ops.available(torch.float32), reason="needs numba")
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("parallel", [False, True], ids=["calling-thread", "numba-threads"])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_decode_kernels_match_a_dense_reference(kv_heads: int, parallel: bool, dtype: torch.dtype, variant: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Rows of different lengths (one block, a partial last block, several blocks) through
    # out-of-order block tables padded with zeros; grouped and plain multi-head attention.
    # bfloat16 inputs are read exactly and the float32 result rounded once.
    monkeypatch.setattr(numba_support, "PARALLEL_WORK", 0 if parallel else 2**62)
    gen = torch.Generator().manual_seed(1)
    bs, heads, dim = 4, 4, 16
    cache = KVCache(num_layers=1, num_blocks=8, block_size=bs, num_kv_heads=kv_heads, head_dim=dim,
                    dtype=dtype, devices=[torch.device("cpu")])
    cache.keys[0].copy_(torch.randn(cache.keys[0].shape, generator=gen))
    cache.values[0].copy_(torch.randn(cache.values[0].shape, generator=gen))
    table = [[6, 2, 7], [3, 0, 0], [1, 5, 4]]
    lens = [11, 4, 12]
    query = torch.randn(3, heads, 1, dim, generator=gen).to(dtype)
    # The query heads at the start of wider rows, as in a fused q/k/v projection.
    rows = torch.cat([query.reshape(3, heads * dim), torch.randn(3, 2 * kv_heads * dim, generator=gen).to(dtype)], 1)
    options = VARIANTS[variant]
    out = cpu_attention.decode_attention(rows, heads, cache.keys[0], cache.values[0], torch.tensor(table),
                                         torch.tensor(lens), 0.3, bs, **options)
    assert out.shape == (3, 1, heads, dim) and out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(out.double(), _dense(cache, query, table, lens, 0.3, **options), rtol=tol, atol=tol)


@pytest.mark.skipif(not cpu_ops.available(torch.float32), reason="needs numba")
def test_cpu_decode_rows_attend_through_the_kernels() -> None:
    # attend() with block tables on the CPU: the kernels' result, scaled by the head dimension by default.
    gen = torch.Generator().manual_seed(2)
    bs, kv_heads, heads, dim = 4, 2, 4, 8
    cache = KVCache(num_layers=1, num_blocks=6, block_size=bs, num_kv_heads=kv_heads, head_dim=dim,
                    dtype=torch.float32, devices=[torch.device("cpu")])
    cache.keys[0].copy_(torch.randn(cache.keys[0].shape, generator=gen))
    cache.values[0].copy_(torch.randn(cache.values[0].shape, generator=gen))
    table, lens = [[4, 1], [0, 5]], [7, 5]
    meta = AttentionMetadata(kv_cache=cache, slot_mapping=torch.tensor([0, 0]), gather_blocks=None, mask=None,
                             causal_only=False, block_tables=torch.tensor(table), context_lens=torch.tensor(lens))
    query = torch.randn(2, heads, 1, dim, generator=gen)
    out = attend(meta, 0, query, torch.empty(2, kv_heads, 1, dim), None, None)
    torch.testing.assert_close(out.double(), _dense(cache, query, table, lens, dim**-0.5), rtol=1e-5, atol=1e-5)



@pytest.mark.skipif(not cpu_ops.available(torch.float32), reason="needs numba")
def test_cpu_decode_kernels_are_checked_before_use(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cpu_attention.reproduces()

    class Scores:
        """Stands in for the scores kernel, in both its calls."""

        def __init__(self, fill: Any) -> None:
            self.fill = fill

        def warm(self, *args: Any) -> None:
            self.fill(*args)

        def __call__(self, work: int, *args: Any) -> None:
            self.fill(*args)

    def failing(*args: Any) -> None:
        raise ValueError("No threading layer could be loaded.")

    monkeypatch.setattr(cpu_attention, "_scores", Scores(failing))
    assert not cpu_attention.reproduces()

    def first_token_only(rows, heads, k_cache, tables, lengths, window, scale, softcap, block_size, scores):  # noqa: ANN001, ANN202
        scores[:] = -np.inf
        scores[:, :, 0] = 0.0

    off_by_one = Scores(first_token_only)
    monkeypatch.setattr(cpu_attention, "_scores", off_by_one)
    assert not cpu_attention.reproduces()
