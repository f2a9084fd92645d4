"""Triton kernels for linear products whose weights are packed to 4 or 8 bits (CUDA only).

The packed layout (``quantization.packing`` makes it): a weight ``[N, K]`` is ``[N, Kp / per_word]``
int32 words, ``per_word = 32 // bits`` values along K in each word (value ``k`` of a row in bits
``bits * (k % per_word)`` of word ``k // per_word``), K padded to ``Kp``, a multiple of ``CHUNK``.  A
value ``u`` stands for ``(u - 2 ** (bits - 1)) * scale + offset``: grouped weights have a scale and an
offset for each ``CHUNK`` values of a row (``scales[Kp / CHUNK, N]``, the offsets alike); per-row
weights one scale for the whole row (``scales[1, N]``) and no offset.

Every kernel turns the words into numbers in registers, so a product reads its weight once, packed:
``gemv`` for one row (fp32 multiply-adds), ``gemm`` for a few to a few hundred rows (a tensor-core
product of each chunk of K, split along K where the output alone has too few tiles to fill the
GPU), and ``dequantize`` unpacks a whole weight for a library product over many rows (a prompt
chunk).  ``gemm`` multiplies the small integers themselves (exact in 16 bits) and applies a chunk's
scale and offset to its partial sums: ``sum_k (v_k * s + c) * x_k = s * sum_k v_k * x_k + c * sum_k x_k``.
Launch configurations are timed on the GPU at a shape's first product (``triton.autotune``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.testing
import triton.language as tl

from ...quantization.packing import CHUNK, PackedWeight


def _timed(kernel_call: Callable[[], object], quantiles: list[float]) -> object:
    # Short timings: a model's first load times every config of each of its shapes.
    return triton.testing.do_bench(kernel_call, warmup=3, rep=15, quantiles=quantiles)


# The configs chosen are kept in Triton's cache directory, so later loads of a model skip the timing.
_TUNING = {"do_bench": _timed, "cache_results": True}


@triton.jit
def _values(words, shifts, BITS: tl.constexpr):
    # The field at each shift, less 2 ** (BITS - 1), as an exact float32: a small integer OR-ed into
    # the mantissa of 2 ** 23 and the sum subtracted, cheaper than an integer-to-float conversion.
    field = (words >> shifts) & ((1 << BITS) - 1)
    return (field | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + (1 << (BITS - 1)))


def _gemv_configs() -> list[triton.Config]:
    return [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w)
            for n in (2, 4, 8) for k, w in ((256, 4), (512, 8))]


@triton.autotune(configs=_gemv_configs(), key=["N", "K", "BITS"], **_TUNING)
@triton.jit
def _gemv_kernel(x_ptr, w_ptr, s_ptr, c_ptr, b_ptr, y_ptr, N, K, Kp, stride_w, stride_s,
                 BITS: tl.constexpr, CHUNK: tl.constexpr, GROUPED: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    PER_WORD: tl.constexpr = 32 // BITS
    WORDS: tl.constexpr = BLOCK_K // PER_WORD
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    word = tl.arange(0, WORDS)
    field = tl.arange(0, PER_WORD)
    shifts = (field * BITS)[None, None, :]
    acc = tl.zeros((BLOCK_N, WORDS, PER_WORD), dtype=tl.float32)
    for k0 in range(0, Kp, BLOCK_K):
        w_at = k0 // PER_WORD + word  # [W]
        ok = row_ok[:, None] & (w_at < Kp // PER_WORD)[None, :]
        words = tl.load(w_ptr + rows[:, None] * stride_w + w_at[None, :], mask=ok, other=0)  # [BN, W]
        k = k0 + word[:, None] * PER_WORD + field[None, :]  # [W, PW]: contiguous positions of x
        x = tl.load(x_ptr + k, mask=k < K, other=0.0).to(tl.float32)
        v = _values(words[:, :, None], shifts, BITS)  # [BN, W, PW]
        if GROUPED:
            at = ((k0 + word * PER_WORD) // CHUNK)[None, :] * stride_s + rows[:, None]  # [BN, W]
            scale = tl.load(s_ptr + at, mask=ok, other=0.0).to(tl.float32)
            offset = tl.load(c_ptr + at, mask=ok, other=0.0).to(tl.float32)
            v = v * scale[:, :, None] + offset[:, :, None]
        acc += v * x[None, :, :]
    y = tl.sum(tl.sum(acc, 2), 1)
    if not GROUPED:
        y *= tl.load(s_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


#: The most programs that share one output tile's K range (``gemm``'s scratch is sized for it).
MAX_SPLIT = 4
#: Rows up to which ``gemm`` may split K, and outputs narrow enough to need it (wider ones have
#: tiles enough to fill the GPU, and their partial sums would take much scratch memory).
SPLIT_ROWS = 64
SPLIT_COLUMNS = 16384


def _may_split(rows: int, columns: int) -> bool:
    return rows <= SPLIT_ROWS and columns <= SPLIT_COLUMNS


def _gemm_configs() -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "SPLIT": s}, num_warps=4 if m * n < 8192 else 8, num_stages=3)
            for m in (16, 32, 64) for n in (64, 128) for s in (1, MAX_SPLIT)]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    rows, split = named_args["M_KEY"], _may_split(named_args["M_KEY"], named_args["N"])
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, rows) and (c.kwargs["SPLIT"] == 1 or split)]
    return kept or configs[:1]


# Row counts vary from call to call: one compiled kernel serves them all, tuned per power of two.
@triton.autotune(configs=_gemm_configs(), key=["M_KEY", "N", "K", "BITS"], prune_configs_by={"early_config_prune": _prune},
                 **_TUNING)
@triton.jit(do_not_specialize=["M", "M_KEY"])
def _gemm_kernel(x_ptr, w_ptr, s_ptr, c_ptr, b_ptr, y_ptr, part_ptr, count_ptr, M, M_KEY, N, K, Kp,
                 stride_x, stride_w, stride_s,
                 BITS: tl.constexpr, CHUNK: tl.constexpr, GROUPED: tl.constexpr, HAS_BIAS: tl.constexpr,
                 PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr):
    PER_WORD: tl.constexpr = 32 // BITS
    WORDS: tl.constexpr = CHUNK // PER_WORD
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < M, cols < N
    word = tl.arange(0, WORDS)
    shifts = (tl.arange(0, PER_WORD) * BITS)[None, :, None]
    within = tl.arange(0, CHUNK)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    chunks = Kp // CHUNK
    per_split = tl.cdiv(chunks, SPLIT)
    first = pid_k * per_split
    last = tl.minimum(first + per_split, chunks)
    for chunk in range(first, last):
        words = tl.load(w_ptr + cols[None, :] * stride_w + (chunk * WORDS + word)[:, None],
                        mask=col_ok[None, :], other=0)  # [W, BN]
        # [W, PW, BN] -> [CHUNK, BN]: row w * PER_WORD + j is K position chunk * CHUNK + that.
        v = tl.reshape(_values(words[:, None, :], shifts, BITS), (CHUNK, BLOCK_N))
        k = chunk * CHUNK + within
        x = tl.load(x_ptr + rows[:, None] * stride_x + k[None, :], mask=row_ok[:, None] & (k < K)[None, :],
                    other=0.0)  # [BM, CHUNK]
        part = tl.dot(x, v.to(x.dtype), input_precision=PRECISION)
        if GROUPED:
            scale = tl.load(s_ptr + chunk * stride_s + cols, mask=col_ok, other=0.0).to(tl.float32)
            offset = tl.load(c_ptr + chunk * stride_s + cols, mask=col_ok, other=0.0).to(tl.float32)
            x_sum = tl.sum(x.to(tl.float32), 1)
            acc += part * scale[None, :] + x_sum[:, None] * offset[None, :]
        else:
            acc += part
    if not GROUPED:
        acc *= tl.load(s_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    out = rows[:, None] * N + cols[None, :]
    ok = row_ok[:, None] & col_ok[None, :]
    if SPLIT == 1:
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
        if arrived == SPLIT - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(0, SPLIT):
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
    word = tl.arange(0, WORDS)
    field = tl.arange(0, PER_WORD)
    words = tl.load(w_ptr + rows[:, None] * stride_w + (chunk * WORDS + word)[None, :], mask=row_ok[:, None], other=0)
    v = _values(words[:, :, None], (field * BITS)[None, None, :], BITS)  # [BN, W, PW]
    if GROUPED:
        scale = tl.load(s_ptr + chunk * stride_s + rows, mask=row_ok, other=0.0).to(tl.float32)
        offset = tl.load(c_ptr + chunk * stride_s + rows, mask=row_ok, other=0.0).to(tl.float32)
        v = v * scale[:, None, None] + offset[:, None, None]
    else:
        v = v * tl.load(s_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None, None]
    k = chunk * CHUNK + word[:, None] * PER_WORD + field[None, :]  # [W, PW], contiguous
    tl.store(out_ptr + rows[:, None, None] * K + k[None, :, :], v.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None, None] & (k < K)[None, :, :])


def _padded_k(w: PackedWeight) -> int:
    return w.words.shape[1] * (32 // w.bits)


def gemv(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """``x @ W.T (+ bias)`` of one contiguous row ``x`` (any leading shape of size one)."""
    n = w.words.shape[0]
    y = torch.empty(*x.shape[:-1], n, device=x.device, dtype=x.dtype)
    grouped = w.offsets is not None
    _gemv_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](
        x, w.words, w.scales, w.offsets if grouped else w.scales, w.bias if w.bias is not None else w.scales, y,
        n, w.in_features, _padded_k(w), w.words.stride(0), w.scales.stride(0),
        BITS=w.bits, CHUNK=CHUNK, GROUPED=grouped, HAS_BIAS=w.bias is not None,
    )
    return y


def split_counts(n: int) -> int:
    """Tile counters a ``gemm`` of up to ``SPLIT_ROWS`` rows and ``n`` columns may need."""
    return triton.cdiv(SPLIT_ROWS, 16) * triton.cdiv(n, 64)


def gemm(x: torch.Tensor, w: PackedWeight, counts: torch.Tensor) -> torch.Tensor:
    """``x @ W.T (+ bias)`` of ``x [..., K]`` (last dim contiguous).

    ``counts``: int32 zeros, at least ``split_counts(N)`` of them, on ``x``'s device (each call leaves
    them zero again).
    """
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    m, n = x2.shape[0], w.words.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    partial = torch.empty(MAX_SPLIT * m * n if _may_split(m, n) else 1, device=x.device, dtype=torch.float32)
    grouped = w.offsets is not None
    _gemm_kernel[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT"])](
        x2, w.words, w.scales, w.offsets if grouped else w.scales, w.bias if w.bias is not None else w.scales, y,
        partial, counts, m, triton.next_power_of_2(m), n, w.in_features, _padded_k(w),
        x2.stride(0), w.words.stride(0), w.scales.stride(0),
        BITS=w.bits, CHUNK=CHUNK, GROUPED=grouped, HAS_BIAS=w.bias is not None,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
    )
    return y.view(*x.shape[:-1], n)


def dequantize(w: PackedWeight, dtype: torch.dtype) -> torch.Tensor:
    """The weight ``[N, K]`` in ``dtype``."""
    n = w.words.shape[0]
    out = torch.empty(n, w.in_features, device=w.words.device, dtype=dtype)
    block_n = 8
    grouped = w.offsets is not None
    _dequantize_kernel[(triton.cdiv(n, block_n), _padded_k(w) // CHUNK)](
        w.words, w.scales, w.offsets if grouped else w.scales, out, n, w.in_features, w.words.stride(0),
        w.scales.stride(0), BITS=w.bits, CHUNK=CHUNK, BLOCK_N=block_n, GROUPED=grouped, num_warps=4,
    )
    return out
