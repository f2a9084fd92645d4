"""Attention over the paged KV cache, registered with transformers' attention interface.

The model computes q/k/v and rotary embeddings as usual and then calls this function for
every layer.  It writes the new keys and values into their cache slots and attends over
each row's cached context, so the model code of transformers is used unchanged while the
cache layout and the ragged batching are ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from . import cpu_attention
from .kv_cache import KVCache

ATTENTION_NAME = "llm_middleware_paged"


@dataclass(slots=True)
class AttentionMetadata:
    """Per-step tensors shared by every layer (passed to the model as ``llm_attention=``)."""

    kv_cache: KVCache
    slot_mapping: torch.Tensor  # [B * S] cache slot of each new token (scratch for padding)
    gather_blocks: torch.Tensor | None  # [B, max_blocks] block ids of each row's context (L = max_blocks * block_size)
    mask: torch.Tensor | None  # [B, 1, S, L] True where a query may attend a key
    causal_only: bool  # fresh prompts of equal length: plain causal attention on the new tokens
    # One-token decode rows: each row's context read in place through its block table (CUDA and CPU kernels).
    block_tables: torch.Tensor | None = None  # [B, max_blocks] int64
    context_lens: torch.Tensor | None = None  # [B], the new token included
    bias: torch.Tensor | None = None  # [B, 1, L]: ``mask`` of one-token rows as 0 / -inf, made by the first layer
    rope_rows: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, sin [B * S, D] for the kernels, made by the first layer


def write_cache(meta: AttentionMetadata, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
    """Store the new keys and values ``[B, KVH, S, D]`` in their cache slots."""
    k_cache, v_cache = meta.kv_cache.keys[layer], meta.kv_cache.values[layer]
    kv_heads, head_dim = key.shape[1], key.shape[3]
    slots = meta.slot_mapping.to(k_cache.device)  # a no-op unless layers span several devices
    k_cache.index_copy_(0, slots, key.transpose(1, 2).reshape(-1, kv_heads, head_dim))
    v_cache.index_copy_(0, slots, value.transpose(1, 2).reshape(-1, kv_heads, head_dim))


def attend(
    meta: AttentionMetadata,
    layer: int,
    query: torch.Tensor,  # [B, H, S, D]
    key: torch.Tensor,  # [B, KVH, S, D], already in the cache
    value: torch.Tensor,
    scaling: float | None,
) -> torch.Tensor:
    """Each row's new queries over its cached context (the new tokens included); ``[B, S, H, D]``."""
    k_cache, v_cache = meta.kv_cache.keys[layer], meta.kv_cache.values[layer]
    batch, kv_heads, _, head_dim = key.shape
    if meta.block_tables is not None:
        scale = scaling if scaling is not None else head_dim**-0.5
        if query.device.type == "cpu":
            heads = query.shape[1]
            rows = query.reshape(batch, heads * head_dim).contiguous()
            return cpu_attention.decode_attention(rows, heads, k_cache, v_cache, meta.block_tables, meta.context_lens,
                                                  scale, meta.kv_cache.block_size)
        from .paged_decode import paged_decode_attention

        return paged_decode_attention(
            query, k_cache, v_cache, meta.block_tables, meta.context_lens, scale, meta.kv_cache.block_size
        )
    if meta.causal_only:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=True)
    else:
        cache = meta.kv_cache
        shape = (batch, -1, kv_heads, head_dim)
        # PyTorch's CPU attention with a mask runs 16-bit inputs about 7x slower than float32 ones
        # (measured for 32 decode rows over 256 keys): there it computes in float32.
        upcast = query.device.type == "cpu" and query.dtype != torch.float32
        dtype = torch.float32 if upcast else query.dtype
        # index_select copies whole blocks; indexing with the 2-D table ran 7x slower on a CPU.
        blocks = meta.gather_blocks.to(k_cache.device).reshape(-1)
        keys = cache.blocks(k_cache).index_select(0, blocks).to(dtype).view(shape)  # [B, L, KVH, D]
        values = cache.blocks(v_cache).index_select(0, blocks).to(dtype).view(shape)
        if query.device.type == "cpu" and query.shape[2] == 1:
            return _one_query_attention(meta, query.to(dtype), keys, values, scaling).to(query.dtype)
        mask = meta.mask.to(k_cache.device)
        out = F.scaled_dot_product_attention(query.to(dtype), keys.transpose(1, 2), values.transpose(1, 2),
                                             attn_mask=mask, scale=scaling, enable_gqa=True).to(query.dtype)
    return out.transpose(1, 2).contiguous()


def _one_query_attention(meta: AttentionMetadata, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                         scaling: float | None) -> torch.Tensor:
    """Decode rows on the CPU: ``query [B, H, 1, D]`` over ``keys``/``values [B, L, KVH, D]``; ``[B, 1, H, D]``.

    PyTorch's fused CPU attention splits its work by blocks of queries, which one query token
    per row leaves mostly idle: for 32 rows over 256 keys it took 1.5x as long as these batched
    products, one per KV head over the query heads that share it.
    """
    batch, heads, _, head_dim = query.shape
    kv_heads = keys.shape[2]
    group = heads // kv_heads
    if meta.bias is None:
        mask = meta.mask.to(keys.device).view(batch, 1, -1)
        meta.bias = torch.zeros(mask.shape, dtype=query.dtype, device=keys.device).masked_fill_(~mask, float("-inf"))
    bias = meta.bias.expand(batch, group, -1)
    scale = scaling if scaling is not None else head_dim**-0.5
    grouped = query.reshape(batch, kv_heads, group, head_dim)
    outs = [
        torch.bmm(torch.softmax(torch.baddbmm(bias, grouped[:, h], keys[:, :, h].transpose(1, 2), alpha=scale), dim=-1),
                  values[:, :, h])
        for h in range(kv_heads)
    ]
    return torch.cat(outs, dim=1).view(batch, 1, heads, head_dim)


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, H, S, D]
    key: torch.Tensor,  # [B, KVH, S, D]
    value: torch.Tensor,  # [B, KVH, S, D]
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    meta: AttentionMetadata = kwargs["llm_attention"]
    write_cache(meta, module.layer_idx, key, value)
    return attend(meta, module.layer_idx, query, key, value, scaling), None  # [B, S, H, D]


AttentionInterface.register(ATTENTION_NAME, paged_attention_forward)
