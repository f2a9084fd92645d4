"""Triton kernels for linear products whose weights are packed to 4 or 8 bits (CUDA only).

The packed layout (``quantization.packing`` makes it): a weight ``[N, K]`` is ``[N, Kp / per_word]``
int32 words, ``per_word = 32 // bits`` values along K in each word (value ``k`` of a row in bits
``bits * (k % per_word)`` of word ``k // per_word``), K padded to ``Kp``, a multiple of ``CHUNK``.  A
value ``u`` stands for ``(u - 2 ** (bits - 1)) * scale + offset``: grouped weights have a scale and an
offset for each ``CHUNK`` values of a row (``scales[Kp / CHUNK, N]``, the offsets alike); per-row
weights one scale for the whole row (``scales[1, N]``) and no offset.

Every kernel turns the words into numbers in registers, so a product reads its weight once, packed:
``gemv`` for one row (fp32 multiply-adds), ``gemm`` for a few to a few hundred (tensor-core products
of each chunk, split along K where the output alone has too few tiles to fill the GPU), and
``dequantize`` unpacks a whole weight for a library product over many rows (a prompt chunk).
The grouped kernels apply each chunk's scale and offset to its partial sums rather than to every
value: ``sum_k (v_k * s + c) * x_k = s * sum_k v_k * x_k + c * sum_k x_k``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ...quantization.packing import CHUNK, PackedWeight

class GemvConfig(NamedTuple):
    block_n: int  # output rows of a program
    chunks: int  # chunks of K a program reads per loop step
    warps: int


class GemmConfig(NamedTuple):
    block_m: int
    block_n: int
    warps: int
    stages: int
    split_k: int  # programs that share each output tile's K range


@triton.jit
def _values(words, j: tl.constexpr, BITS: tl.constexpr):
    # Field j of each word, less 2 ** (BITS - 1), as an exact float32: a small integer OR-ed into the
    # mantissa of 2 ** 23 and the sum subtracted, cheaper than an integer-to-float conversion.
    field = (words >> (BITS * j)) & ((1 << BITS) - 1)
    return (field | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + (1 << (BITS - 1)))


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, s_ptr, c_ptr, b_ptr, y_ptr, N, K, chunks, stride_w, stride_s,
                 BITS: tl.constexpr, CHUNK: tl.constexpr, CHUNKS: tl.constexpr, BLOCK_N: tl.constexpr,
                 GROUPED: tl.constexpr, HAS_BIAS: tl.constexpr):
    PER_WORD: tl.constexpr = 32 // BITS
    WORDS: tl.constexpr = CHUNK // PER_WORD
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    within = tl.arange(0, WORDS)
    acc = tl.zeros((BLOCK_N, CHUNKS, WORDS), dtype=tl.float32)
    for first in range(0, chunks, CHUNKS):
        chunk = first + tl.arange(0, CHUNKS)  # [C]
        word = chunk[:, None] * WORDS + within[None, :]  # [C, W]
        ok = row_ok[:, None, None] & (chunk < chunks)[None, :, None]
        words = tl.load(w_ptr + rows[:, None, None] * stride_w + word[None, :, :], mask=ok, other=0)
        part = tl.zeros((BLOCK_N, CHUNKS, WORDS), dtype=tl.float32)
        x_sum = tl.zeros((CHUNKS, WORDS), dtype=tl.float32)
        for j in tl.static_range(PER_WORD):
            k = word * PER_WORD + j
            xj = tl.load(x_ptr + k, mask=k < K, other=0.0).to(tl.float32)
            part += _values(words, j, BITS) * xj[None, :, :]
            if GROUPED:
                x_sum += xj
        if GROUPED:
            at = chunk[None, :] * stride_s + rows[:, None]  # [BN, C]
            group_ok = row_ok[:, None] & (chunk < chunks)[None, :]
            scale = tl.load(s_ptr + at, mask=group_ok, other=0.0).to(tl.float32)
            offset = tl.load(c_ptr + at, mask=group_ok, other=0.0).to(tl.float32)
            acc += part * scale[:, :, None] + offset[:, :, None] * x_sum[None, :, :]
        else:
            acc += part
    y = tl.sum(tl.sum(acc, 2), 1)
    if not GROUPED:
        y *= tl.load(s_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


# Row and split counts vary from call to call: one compiled kernel serves them all.
@triton.jit(do_not_specialize=["M", "split_k"])
def _gemm_kernel(x_ptr, w_ptr, s_ptr, c_ptr, b_ptr, y_ptr, part_ptr, count_ptr, M, N, K, chunks, split_k,
                 stride_x, stride_w, stride_s,
                 BITS: tl.constexpr, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 GROUPED: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr):
    PER_WORD: tl.constexpr = 32 // BITS
    WORDS: tl.constexpr = CHUNK // PER_WORD
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < M, cols < N
    within = tl.arange(0, WORDS)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    per_split = tl.cdiv(chunks, split_k)
    first = pid_k * per_split
    last = tl.minimum(first + per_split, chunks)
    for chunk in range(first, last):
        word = chunk * WORDS + within  # [W]
        words = tl.load(w_ptr + cols[None, :] * stride_w + word[:, None], mask=col_ok[None, :], other=0)  # [W, BN]
        part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        x_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
        # Field j of the words holds K positions j, j + PER_WORD, ...: the matching columns of x.
        for j in tl.static_range(PER_WORD):
            k = word * PER_WORD + j
            xj = tl.load(x_ptr + rows[:, None] * stride_x + k[None, :], mask=row_ok[:, None] & (k < K)[None, :],
                         other=0.0)  # [BM, W]
            part = tl.dot(xj, _values(words, j, BITS).to(xj.dtype), part, input_precision=PRECISION)
            if GROUPED:
                x_sum += tl.sum(xj.to(tl.float32), 1)
        if GROUPED:
            scale = tl.load(s_ptr + chunk * stride_s + cols, mask=col_ok, other=0.0).to(tl.float32)
            offset = tl.load(c_ptr + chunk * stride_s + cols, mask=col_ok, other=0.0).to(tl.float32)
            acc += part * scale[None, :] + x_sum[:, None] * offset[None, :]
        else:
            acc += part
    if not GROUPED:
        acc *= tl.load(s_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    out = rows[:, None] * N + cols[None, :]
    ok = row_ok[:, None] & col_ok[None, :]
    if split_k == 1:
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=ok)
    else:
        # Each split writes its partial sums; the last of a tile's splits to arrive adds them up
        # and sets the tile's count back to zero for the next product.
        tl.store(part_ptr + pid_k * M * N + out, acc, mask=ok)
        tl.debug_barrier()  # every thread's partial sums are written before the count says so
        tile = pid_m * tl.num_programs(1) + pid_n
        arrived = tl.atomic_add(count_ptr + tile, 1)
        if arrived == split_k - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(0, split_k):
                total += tl.load(part_ptr + s * M * N + out, mask=ok, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                total += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            tl.store(y_ptr + out, total.to(y_ptr.dtype.element_ty), mask=ok)
            tl.atomic_xchg(count_ptr + tile, 0)


@triton.jit
def _dequantize_kernel(w_ptr, s_ptr, c_ptr, out_ptr, N, K, stride_w, stride_s,
                       BITS: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, GROUPED: tl.constexpr):
    PER_WORD: tl.constexpr = 32 // BITS
    WORDS: tl.constexpr = CHUNK // PER_WORD
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    chunk = tl.program_id(1)
    row_ok = rows < N
    word = chunk * WORDS + tl.arange(0, WORDS)
    words = tl.load(w_ptr + rows[:, None] * stride_w + word[None, :], mask=row_ok[:, None], other=0)
    if GROUPED:
        scale = tl.load(s_ptr + chunk * stride_s + rows, mask=row_ok, other=0.0).to(tl.float32)
        offset = tl.load(c_ptr + chunk * stride_s + rows, mask=row_ok, other=0.0).to(tl.float32)
    else:
        scale = tl.load(s_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        offset = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for j in tl.static_range(PER_WORD):
        k = word * PER_WORD + j
        value = _values(words, j, BITS) * scale[:, None] + offset[:, None]
        tl.store(out_ptr + rows[:, None] * K + k[None, :], value.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (k < K)[None, :])


def _chunks(w: PackedWeight) -> int:
    return w.words.shape[1] * (32 // w.bits) // CHUNK


def gemv(x: torch.Tensor, w: PackedWeight, config: GemvConfig) -> torch.Tensor:
    """``x @ W.T (+ bias)`` of one contiguous row ``x`` (any leading shape of size one)."""
    n = w.words.shape[0]
    y = torch.empty(*x.shape[:-1], n, device=x.device, dtype=x.dtype)
    grouped = w.offsets is not None
    _gemv_kernel[(triton.cdiv(n, config.block_n),)](
        x, w.words, w.scales, w.offsets if grouped else w.scales, w.bias if w.bias is not None else w.scales, y,
        n, w.in_features, _chunks(w), w.words.stride(0), w.scales.stride(0),
        BITS=w.bits, CHUNK=CHUNK, CHUNKS=config.chunks, BLOCK_N=config.block_n, GROUPED=grouped,
        HAS_BIAS=w.bias is not None, num_warps=config.warps,
    )
    return y


def split_counts(m: int, n: int, config: GemmConfig) -> int:
    """Tile counters a split ``gemm`` of ``m`` rows needs (zero without a split)."""
    return triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n) if config.split_k > 1 else 0


def gemm(x: torch.Tensor, w: PackedWeight, config: GemmConfig, counts: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` of ``x [..., K]`` (last dim contiguous).

    ``counts``: int32 zeros, at least ``split_counts(rows, N, config)`` of them, where the config splits
    K (each call leaves them zero again).
    """
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    m, n = x2.shape[0], w.words.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    split = config.split_k
    partial = torch.empty(split * m * n if split > 1 else 1, device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(m, config.block_m), triton.cdiv(n, config.block_n), split)
    grouped = w.offsets is not None
    _gemm_kernel[grid](
        x2, w.words, w.scales, w.offsets if grouped else w.scales, w.bias if w.bias is not None else w.scales, y,
        partial, counts if counts is not None else w.words, m, n, w.in_features, _chunks(w), split,
        x2.stride(0), w.words.stride(0), w.scales.stride(0),
        BITS=w.bits, CHUNK=CHUNK, BLOCK_M=config.block_m, BLOCK_N=config.block_n, GROUPED=grouped,
        HAS_BIAS=w.bias is not None, PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=config.warps, num_stages=config.stages,
    )
    return y.view(*x.shape[:-1], n)


def dequantize(w: PackedWeight, dtype: torch.dtype) -> torch.Tensor:
    """The weight ``[N, K]`` in ``dtype``."""
    n = w.words.shape[0]
    out = torch.empty(n, w.in_features, device=w.words.device, dtype=dtype)
    block_n = 16
    grouped = w.offsets is not None
    _dequantize_kernel[(triton.cdiv(n, block_n), _chunks(w))](
        w.words, w.scales, w.offsets if grouped else w.scales, out, n, w.in_features, w.words.stride(0),
        w.scales.stride(0), BITS=w.bits, CHUNK=CHUNK, BLOCK_N=block_n, GROUPED=grouped, num_warps=4,
    )
    return out
