"""A Triton kernel for decode attention over the paged KV cache (CUDA only).

One program per (sequence, KV head) walks that sequence's blocks through its block table
with an online softmax, so every cached key and value is read once and shapes stay static
(the block table has a fixed width): the decode step can be captured in a CUDA graph.

A layer's sliding window starts the walk at the row's last ``window`` positions; soft-capping
bends each score and sinks start the online softmax with the sink's logit and weight
(``attention.paged.AttentionVariant``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, block_tables_ptr, context_lens_ptr, sinks_ptr,
    scale, softcap, window,
    stride_qb, stride_qh,
    stride_ks, stride_kh,
    stride_vs, stride_vh,
    stride_ob, stride_oh,
    stride_bt,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
    WINDOWED: tl.constexpr, SOFTCAP: tl.constexpr, SINKS: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    context = tl.load(context_lens_ptr + seq)
    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    heads = kv_head * GROUP + offs_g
    mask_g = offs_g < GROUP
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=mask_g[:, None], other=0.0)
    first = 0
    if WINDOWED:
        first = tl.maximum(context - window, 0)
    if SINKS:  # the sink is a key whose score is its logit and whose value is zero
        m_i = tl.load(sinks_ptr + heads, mask=mask_g, other=float("-inf")).to(tl.float32)
        l_i = tl.where(mask_g, 1.0, 0.0).to(tl.float32)
    else:
        m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    for start in range(first - first % BLOCK_N, context, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = (offs_n < context) & (offs_n >= first)
        block = tl.load(block_tables_ptr + seq * stride_bt + offs_n // BLOCK_SIZE, mask=mask_n, other=0)
        slots = block.to(tl.int64) * BLOCK_SIZE + offs_n % BLOCK_SIZE
        k = tl.load(k_ptr + slots[:, None] * stride_ks + kv_head * stride_kh + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        v = tl.load(v_ptr + slots[:, None] * stride_vs + kv_head * stride_vh + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        # Cast after scaling: under torch.compile ``scale`` arrives as a float64 scalar.
        scores = (tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale).to(tl.float32)  # [GROUP_PAD, BLOCK_N]
        if SOFTCAP:  # softcap * tanh(scores / softcap), tanh written with exp: 1 - 2 / (e^2x + 1)
            scores = softcap * (1.0 - 2.0 / (tl.exp(2.0 * scores / softcap) + 1.0))
        scores = tl.where(mask_n[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        p = tl.exp(scores - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION).to(tl.float32)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(out_ptr + seq * stride_ob + heads[:, None] * stride_oh + offs_d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=mask_g[:, None])


def paged_decode_attention(
    query: torch.Tensor,  # [B, H, 1, D]
    k_cache: torch.Tensor,  # [slots, KVH, D]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    context_lens: torch.Tensor,  # [B] int32
    scale: float,
    block_size: int,
    *,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,  # [H]
) -> torch.Tensor:
    """Attention of one new token per sequence over its cached context; returns ``[B, 1, H, D]``.

    ``window``, ``softcap`` and ``sinks``: as ``attention.paged.AttentionVariant``'s.
    """
    batch, heads, _, head_dim = query.shape
    kv_heads = k_cache.shape[1]
    group = heads // kv_heads
    out = torch.empty((batch, 1, heads, head_dim), dtype=query.dtype, device=query.device)
    q = query[:, :, 0, :]
    o = out[:, 0]
    _paged_decode_kernel[(batch, kv_heads)](
        q, k_cache, v_cache, o, block_tables, context_lens, sinks if sinks is not None else q,  # unread without sinks
        scale, softcap or 0.0, window or 0,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1),
        o.stride(0), o.stride(1),
        block_tables.stride(0),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, BLOCK_N=64,
        # Full float32 products when the model runs in float32 (tf32 would lose exactness).
        PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        WINDOWED=window is not None, SOFTCAP=softcap is not None, SINKS=sinks is not None,
    )
    return out
