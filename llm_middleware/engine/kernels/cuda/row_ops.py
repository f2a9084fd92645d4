"""Triton kernels for a decode step's one-row products and elementwise steps (CUDA only).

At one stream each linear layer reads its whole weight to produce a single row: ``gemv`` reads
it closer to the memory's bandwidth than cuBLAS's kernels for that shape (which also split the
narrow layers' sums over a second reduce kernel).  ``add_rms_norm`` and ``silu_mul`` each replace
two kernels of a decoder layer (a residual add and the norm after it; the activation and the product).

Each kernel rounds where the model's own ops round, so bf16 results match them to an ulp.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_w,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_N: tl.constexpr, HAS_BIAS: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + rows[:, None] * stride_w + cols[None, :]
    # Products are summed across the block's columns only once, after the loop.
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        if EVEN_N:
            w = tl.load(w_ptrs + k)
        else:
            w = tl.load(w_ptrs + k, mask=(rows < N)[:, None], other=0.0)
        x = tl.load(x_ptr + k + cols)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, 1)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rows < N)


def gemv_block_k(weight: torch.Tensor) -> int | None:
    """The column block ``gemv`` reads ``weight`` in, or None where it does not fit the kernel."""
    if weight.dim() != 2 or weight.stride(1) != 1 or weight.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return None
    return next((b for b in (512, 256, 128, 64, 32) if weight.shape[1] % b == 0), None)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, block_k: int) -> torch.Tensor:
    """``F.linear`` of one contiguous row ``x`` (any leading shape of size one) on CUDA."""
    n, k = weight.shape
    y = torch.empty(*x.shape[:-1], n, device=x.device, dtype=x.dtype)
    block_n = 4  # small blocks: thousands of programs keep every SM's loads in flight
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight, bias if bias is not None else weight, y, n, k, weight.stride(0),
        BLOCK_N=block_n, BLOCK_K=block_k, EVEN_N=n % block_n == 0, HAS_BIAS=bias is not None,
        num_warps=8 if n <= 4096 else 4, num_stages=2,
    )
    return y


@triton.jit
def _add_rms_norm_kernel(res_ptr, delta_ptr, w_ptr, sum_ptr, out_ptr, n, eps, stride_r, stride_d,
                         BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    dtype = sum_ptr.dtype.element_ty
    r = tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)
    d = tl.load(delta_ptr + row * stride_d + offs, mask=mask, other=0.0).to(tl.float32)
    h = (r + d).to(dtype)
    tl.store(sum_ptr + row * n + offs, h, mask=mask)
    x = h.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, 0) / n + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * n + offs, ((x * rstd).to(dtype).to(tl.float32) * w).to(dtype), mask=mask)


def add_rms_norm(residual: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual + delta`` and its RMS norm scaled by ``weight``, in one kernel (last dims contiguous)."""
    n = residual.shape[-1]
    res2, delta2 = residual.reshape(-1, n), delta.reshape(-1, n)
    total = torch.empty_like(residual)
    normed = torch.empty_like(residual)
    block = triton.next_power_of_2(n)
    _add_rms_norm_kernel[(res2.shape[0],)](
        res2, delta2, weight, total, normed, n, eps, res2.stride(0), delta2.stride(0),
        BLOCK=block, num_warps=8 if block >= 2048 else 4,
    )
    return total, normed


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, inter, stride_gu, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    dtype = out_ptr.dtype.element_ty
    g = tl.load(gu_ptr + row * stride_gu + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * stride_gu + inter + cols, mask=mask, other=0.0).to(tl.float32)
    s = (g * tl.sigmoid(g)).to(dtype).to(tl.float32)
    tl.store(out_ptr + row * inter + cols, (s * u).to(dtype), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of a ``[..., 2 * I]`` tensor holding gate then up (last dim contiguous)."""
    inter = gate_up.shape[-1] // 2
    flat = gate_up.reshape(-1, 2 * inter)
    out = torch.empty(*gate_up.shape[:-1], inter, device=gate_up.device, dtype=gate_up.dtype)
    block = 1024
    _silu_mul_kernel[(flat.shape[0], triton.cdiv(inter, block))](flat, out, inter, flat.stride(0), BLOCK=block,
                                                                  num_warps=4)
    return out
