"""A Triton kernel for what comes between the QKV projection and attention (CUDA only).

Per token and head it applies the per-head RMS norm of queries and keys (where the model has
one), the rotary embedding, and stores the new key and value in their cache slots: one launch
per layer instead of the twenty-odd small kernels the model code and the cache write take
(rotary alone is a neg, a cat, four multiplies and two adds).  Rotation is the half-split
form (``x * cos + rotate_half(x) * sin``) that Llama-family models use.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _norm_rope(x1, x2, w_ptr, offs, c1, s1, c2, s2, eps, HALF: tl.constexpr, NORM: tl.constexpr):
    dtype = w_ptr.dtype.element_ty
    if NORM:
        # Rounded where the model's own norm rounds: the normalised value, then the product.
        rstd = tl.rsqrt((tl.sum(x1 * x1, 0) + tl.sum(x2 * x2, 0)) / (2 * HALF) + eps)
        w1 = tl.load(w_ptr + offs).to(tl.float32)
        w2 = tl.load(w_ptr + HALF + offs).to(tl.float32)
        x1 = ((x1 * rstd).to(dtype).to(tl.float32) * w1).to(dtype).to(tl.float32)
        x2 = ((x2 * rstd).to(dtype).to(tl.float32) * w2).to(dtype).to(tl.float32)
    return x1 * c1 - x2 * s1, x2 * c2 + x1 * s2


@triton.jit
def _rope_cache_kernel(
    qkv_ptr, cos_ptr, sin_ptr, q_weight_ptr, k_weight_ptr, slots_ptr, k_cache_ptr, v_cache_ptr,
    eps,
    stride_t, stride_cos, stride_sin, stride_ks, stride_kh, stride_vs, stride_vh,
    HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HALF: tl.constexpr, NORM: tl.constexpr,
):
    token = tl.program_id(0)
    head = tl.program_id(1)  # query heads, then key heads, then value heads
    offs = tl.arange(0, HALF)
    row = qkv_ptr + token * stride_t + head * (2 * HALF)
    slot = tl.load(slots_ptr + token)
    x1 = tl.load(row + offs)
    x2 = tl.load(row + HALF + offs)
    if head >= HEADS + KV_HEADS:
        dst = v_cache_ptr + slot * stride_vs + (head - HEADS - KV_HEADS) * stride_vh
        tl.store(dst + offs, x1.to(v_cache_ptr.dtype.element_ty))
        tl.store(dst + HALF + offs, x2.to(v_cache_ptr.dtype.element_ty))
    else:
        c1 = tl.load(cos_ptr + token * stride_cos + offs).to(tl.float32)
        c2 = tl.load(cos_ptr + token * stride_cos + HALF + offs).to(tl.float32)
        s1 = tl.load(sin_ptr + token * stride_sin + offs).to(tl.float32)
        s2 = tl.load(sin_ptr + token * stride_sin + HALF + offs).to(tl.float32)
        a1 = x1.to(tl.float32)
        a2 = x2.to(tl.float32)
        if head < HEADS:
            y1, y2 = _norm_rope(a1, a2, q_weight_ptr, offs, c1, s1, c2, s2, eps, HALF, NORM)
        else:
            y1, y2 = _norm_rope(a1, a2, k_weight_ptr, offs, c1, s1, c2, s2, eps, HALF, NORM)
            dst = k_cache_ptr + slot * stride_ks + (head - HEADS) * stride_kh
            tl.store(dst + offs, y1.to(k_cache_ptr.dtype.element_ty))
            tl.store(dst + HALF + offs, y2.to(k_cache_ptr.dtype.element_ty))
        tl.store(row + offs, y1.to(qkv_ptr.dtype.element_ty))
        tl.store(row + HALF + offs, y2.to(qkv_ptr.dtype.element_ty))


def rope_and_cache(
    qkv: torch.Tensor,  # [T, (H + 2 * KVH) * D], rotated in place
    cos: torch.Tensor,  # [T, D]
    sin: torch.Tensor,  # [T, D]
    q_weight: torch.Tensor | None,  # [D] per-head norm weights, or None for models without them
    k_weight: torch.Tensor | None,
    eps: float,
    slots: torch.Tensor,  # [T] cache slot of each token
    k_cache: torch.Tensor,  # [slots, KVH, D]
    v_cache: torch.Tensor,
    heads: int,
) -> None:
    """Norm and rotate the queries and keys of ``qkv`` in place; store keys and values in the cache."""
    tokens = qkv.shape[0]
    kv_heads, head_dim = k_cache.shape[1], k_cache.shape[2]
    norm = q_weight is not None
    _rope_cache_kernel[(tokens, heads + 2 * kv_heads)](
        qkv, cos, sin, q_weight if norm else qkv, k_weight if norm else qkv, slots, k_cache, v_cache,
        eps,
        qkv.stride(0), cos.stride(0), sin.stride(0),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        HEADS=heads, KV_HEADS=kv_heads, HALF=head_dim // 2, NORM=norm,
        num_warps=1,
    )
