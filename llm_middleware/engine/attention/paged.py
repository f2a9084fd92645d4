"""Attention over the paged KV cache, registered with transformers' attention interface.

The model computes q/k/v and rotary embeddings as usual and then calls this function for
every layer.  It writes the new keys and values into their cache slots and attends over
each row's cached context, so the model code of transformers is used unchanged while the
cache layout and the ragged batching are ours.

A layer may ask for more than causal softmax attention in its call: a sliding window
(Mistral, Gemma's local layers, gpt-oss), soft-capped scores (Gemma 2) or attention sinks
(gpt-oss).  Every path here computes those (``AttentionVariant``); ``model.attention_features``
refuses a model whose layers ask for anything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from ..kernels.cpu import paged_decode as cpu_attention
from .kv_cache import KVCache

ATTENTION_NAME = "llm_middleware_paged"

# Explicit attention (soft-capping, sinks) holds one float32 score per query, head and key: prompt
# chunks are split by queries so that the scores stay under this many elements.
_EXPLICIT_SCORES = 1 << 24


@dataclass(frozen=True, slots=True, eq=False)
class AttentionVariant:
    """What one layer's attention computes beyond causal softmax attention over its whole context."""

    window: int | None = None  # sliding window: a query sees its own key and the ``window - 1`` before it
    softcap: float | None = None  # scores become ``softcap * tanh(score / softcap)`` before the softmax
    sinks: torch.Tensor | None = None  # [H] each head's sink logit: a share of the softmax that reads no value

    @property
    def plain_softmax(self) -> bool:
        """Whether the probabilities are a plain softmax of the scores (no cap, no sink)."""
        return self.softcap is None and self.sinks is None


PLAIN = AttentionVariant()


def variant_of_call(kwargs: dict[str, Any]) -> AttentionVariant:
    """The variant a layer's call to the attention function asks for (transformers' keyword names)."""
    window, softcap, sinks = kwargs.get("sliding_window"), kwargs.get("softcap"), kwargs.get("s_aux")
    if window is None and softcap is None and sinks is None:
        return PLAIN
    return AttentionVariant(window=window, softcap=softcap, sinks=sinks)


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
    positions: torch.Tensor | None = None  # [B, S] position of each new token (with ``mask``: for sliding windows)
    rope_rows: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, sin [B * S, D] for the kernels, made by the first layer
    # Made by the first layer that needs them, by sliding window (None: the whole context).
    masks: dict[int | None, torch.Tensor] = field(default_factory=dict)  # [B, 1, S, L]; [1, 1, S, S] if causal_only
    biases: dict[int | None, torch.Tensor] = field(default_factory=dict)  # [B, 1, L]: one-token rows' mask as 0 / -inf

    def window_mask(self, window: int | None, device: torch.device) -> torch.Tensor:
        """``mask`` narrowed to a sliding window: a query sees the keys of its last ``window`` positions."""
        mask = self.masks.get(window)
        if mask is None:
            mask = self.mask.to(device)
            if window is not None:
                key_pos = torch.arange(mask.shape[-1], device=device)
                mask = mask & (key_pos > self.positions.to(device)[:, None, :, None] - window)
            self.masks[window] = mask
        return mask

    def causal_mask(self, length: int, window: int | None, device: torch.device) -> torch.Tensor:
        """``[1, 1, S, S]``: causal attention among a fresh prompt's ``length`` tokens, within ``window``."""
        mask = self.masks.get(window)
        if mask is None:
            pos = torch.arange(length, device=device)
            mask = pos[None, :] <= pos[:, None]
            if window is not None:
                mask &= pos[None, :] > pos[:, None] - window
            mask = self.masks[window] = mask[None, None]
        return mask


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
    variant: AttentionVariant = PLAIN,
) -> torch.Tensor:
    """Each row's new queries over its cached context (the new tokens included); ``[B, S, H, D]``."""
    k_cache, v_cache = meta.kv_cache.keys[layer], meta.kv_cache.values[layer]
    batch, kv_heads, _, head_dim = key.shape
    scale = scaling if scaling is not None else head_dim**-0.5
    if meta.block_tables is not None:
        if query.device.type == "cpu":
            heads = query.shape[1]
            rows = query.reshape(batch, heads * head_dim).contiguous()
            return cpu_attention.decode_attention(rows, heads, k_cache, v_cache, meta.block_tables, meta.context_lens,
                                                  scale, meta.kv_cache.block_size, window=variant.window,
                                                  softcap=variant.softcap, sinks=variant.sinks)
        from ..kernels.cuda.paged_decode import paged_decode_attention

        return paged_decode_attention(
            query, k_cache, v_cache, meta.block_tables, meta.context_lens, scale, meta.kv_cache.block_size,
            window=variant.window, softcap=variant.softcap, sinks=variant.sinks,
        )
    seq = query.shape[2]
    if meta.causal_only:
        window = variant.window if variant.window is not None and variant.window < seq else None
        if window is None and variant.plain_softmax:
            out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale, enable_gqa=True)
            return out.transpose(1, 2).contiguous()
        return _masked_attention(query, key, value, meta.causal_mask(seq, window, query.device), scale, variant)
    cache = meta.kv_cache
    shape = (batch, -1, kv_heads, head_dim)
    # PyTorch's CPU attention with a mask runs 16-bit inputs far slower than float32 ones: there it
    # computes in float32.
    upcast = query.device.type == "cpu" and query.dtype != torch.float32
    dtype = torch.float32 if upcast else query.dtype
    # index_select copies whole blocks, much faster on a CPU than indexing with the 2-D table.
    blocks = meta.gather_blocks.to(k_cache.device).reshape(-1)
    keys = cache.blocks(k_cache).index_select(0, blocks).to(dtype).view(shape)  # [B, L, KVH, D]
    values = cache.blocks(v_cache).index_select(0, blocks).to(dtype).view(shape)
    if query.device.type == "cpu" and seq == 1 and variant.plain_softmax:
        return _one_query_attention(meta, query.to(dtype), keys, values, scale, variant.window).to(query.dtype)
    mask = meta.window_mask(variant.window, k_cache.device)
    out = _masked_attention(query.to(dtype), keys.transpose(1, 2), values.transpose(1, 2), mask, scale, variant)
    return out.to(query.dtype)


def _masked_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scale: float,
                      variant: AttentionVariant) -> torch.Tensor:
    """``query [B, H, S, D]`` over ``keys``/``values [B, KVH, L, D]`` where ``mask [B or 1, 1, S, L]``.

    Returns ``[B, S, H, D]``.
    """
    if variant.plain_softmax:
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)
        return out.transpose(1, 2).contiguous()
    # PyTorch's fused attention has no soft-capping and no sinks: the scores are made here, in float32.
    batch, heads, seq, head_dim = query.shape
    kv_heads, length = keys.shape[1], keys.shape[2]
    group = heads // kv_heads
    step = max(1, _EXPLICIT_SCORES // (batch * heads * length))
    keys_t, values_f = keys.float().transpose(2, 3), values.float()
    sinks = variant.sinks.float().view(1, heads, 1, 1) if variant.sinks is not None else None
    outs = []
    for start in range(0, seq, step):
        q = query[:, :, start : start + step].float()
        chunk = q.shape[2]
        # The query heads that share a KV head multiply its keys as one batch: [B, KVH, group * chunk, L].
        scores = torch.matmul(q.reshape(batch, kv_heads, group * chunk, head_dim), keys_t).view(
            batch, heads, chunk, length) * scale
        if variant.softcap is not None:
            scores = torch.tanh(scores / variant.softcap) * variant.softcap
        scores = scores.masked_fill(~mask[:, :, start : start + chunk], float("-inf"))
        if sinks is not None:
            scores = torch.cat([scores, sinks.expand(batch, heads, chunk, 1)], dim=-1)
        probs = torch.softmax(scores, dim=-1)[..., :length]
        out = torch.matmul(probs.reshape(batch, kv_heads, group * chunk, length), values_f)
        outs.append(out.view(batch, heads, chunk, head_dim))
    return torch.cat(outs, dim=2).transpose(1, 2).to(query.dtype).contiguous()


def _one_query_attention(meta: AttentionMetadata, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                         scale: float, window: int | None) -> torch.Tensor:
    """Decode rows on the CPU: ``query [B, H, 1, D]`` over ``keys``/``values [B, L, KVH, D]``; ``[B, 1, H, D]``.

    PyTorch's fused CPU attention splits its work by blocks of queries, which one query token
    per row leaves mostly idle: batched products, one per KV head over the query heads that share
    it, finish sooner.
    """
    batch, heads, _, head_dim = query.shape
    kv_heads = keys.shape[2]
    group = heads // kv_heads
    bias = meta.biases.get(window)
    if bias is None:
        mask = meta.window_mask(window, keys.device).view(batch, 1, -1)
        bias = torch.zeros(mask.shape, dtype=query.dtype, device=keys.device).masked_fill_(~mask, float("-inf"))
        meta.biases[window] = bias
    bias = bias.expand(batch, group, -1)
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
    meta = kwargs["llm_attention"]
    if not isinstance(meta, AttentionMetadata):  # a probe of what the layers ask for (``model.attention_features``)
        return meta.record(module, query, key, value, attention_mask, scaling, kwargs), None
    write_cache(meta, module.layer_idx, key, value)
    return attend(meta, module.layer_idx, query, key, value, scaling, variant_of_call(kwargs)), None  # [B, S, H, D]


AttentionInterface.register(ATTENTION_NAME, paged_attention_forward)
