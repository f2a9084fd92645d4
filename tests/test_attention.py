"""The gather path of attention (prompt chunks over a cached context, decode on the CPU)."""

from __future__ import annotations

import pytest
import torch

from llm_middleware.engine.attention import AttentionMetadata, attend
from llm_middleware.engine.kv_cache import KVCache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gathered_attention_matches_a_dense_reference(dtype: torch.dtype) -> None:
    # Rows attend through out-of-order block tables with their own context lengths; 16-bit
    # inputs are computed in float32 on the CPU and returned in their own dtype.
    gen = torch.Generator().manual_seed(0)
    bs, kv_heads, heads, dim = 4, 2, 4, 8
    cache = KVCache(num_layers=1, num_blocks=6, block_size=bs, num_kv_heads=kv_heads, head_dim=dim, dtype=dtype,
                    devices=[torch.device("cpu")])
    cache.keys[0].copy_(torch.randn(cache.keys[0].shape, generator=gen))
    cache.values[0].copy_(torch.randn(cache.values[0].shape, generator=gen))
    table = torch.tensor([[4, 1], [0, 5]])
    lens = [7, 5]
    mask = (torch.arange(2 * bs)[None, :] < torch.tensor(lens)[:, None])[:, None, None, :]  # [B, 1, 1, L]
    meta = AttentionMetadata(kv_cache=cache, slot_mapping=torch.tensor([0, 0]), gather_blocks=table, mask=mask,
                             causal_only=False)
    query = torch.randn(2, heads, 1, dim, generator=gen).to(dtype)
    out = attend(meta, 0, query, torch.empty(2, kv_heads, 1, dim, dtype=dtype), None, None)
    assert out.shape == (2, 1, heads, dim) and out.dtype == dtype
    for row, (blocks, n) in enumerate(zip(table.tolist(), lens)):
        slots = torch.tensor([blocks[p // bs] * bs + p % bs for p in range(n)])
        k = cache.keys[0][slots].double().transpose(0, 1).repeat_interleave(heads // kv_heads, 0)  # [H, n, D]
        v = cache.values[0][slots].double().transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
        q = query[row].double()  # [H, 1, D]
        expected = torch.softmax(q @ k.transpose(1, 2) * dim**-0.5, -1) @ v
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(out[row, 0].double(), expected[:, 0], rtol=tol, atol=tol)
