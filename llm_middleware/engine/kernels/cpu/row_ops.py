"""Numba kernels for a CPU step's small operations: the CPU's side of ``kernels.cuda.rope_cache`` and ``row_ops``.

On a CPU a one-row decode step is mostly small ops: the per-head norms of queries and keys, the
rotary embedding and the cache write take some twenty PyTorch ops a layer, the residual add and
the norm after it another eight, and each op costs microseconds of dispatch whatever its size.
Each kernel here does one such group in one call, with the GIL released so that the server's
event loop runs meanwhile.  The layers that call them swap them in only where they reproduce the
model's own forward.  Numba compiles them while the model loads (``available``).
"""

from __future__ import annotations

import functools
import logging

import torch

from .numba_support import jit, numba, numpy_of, tensor_of

if numba is not None:
    import numpy as np

    from .numba_support import add_row, exp, narrow, rms_norm_row, widen

logger = logging.getLogger("llm_middleware")


def available(dtype: torch.dtype) -> bool:
    """Whether numba kernels serve tensors of ``dtype`` here: float32 or bfloat16, with numba installed
    and able to compile them (the first call compiles them, seconds where no disk cache holds them)."""
    return numba is not None and dtype in (torch.float32, torch.bfloat16) and _compiled()


def parallel() -> bool:
    """Whether numba's threads run kernels here (after ``available``'s compilation found out)."""
    return numba is not None and _compiled() and _rope_and_cache.threads


@jit
def _rope_and_cache(qkv, cos, sin, q_weight, k_weight, norm, eps, slots, k_cache, v_cache, heads):  # noqa: ANN001, ANN202
    tokens = qkv.shape[0]
    kv_heads, dim = k_cache.shape[1], k_cache.shape[2]
    half = dim // 2
    eps = np.float32(eps)
    for t in numba.prange(tokens):
        slot = slots[t]
        # Each head is read into float32 scratch first and written back after: loops that read and
        # write ``qkv`` itself do not vectorise (the compiler cannot rule out overlap).
        c, s, x = np.empty(dim, np.float32), np.empty(dim, np.float32), np.empty(dim, np.float32)
        normed = np.empty(dim, qkv.dtype)
        for d in range(dim):
            c[d] = widen(cos[t, d])
            s[d] = widen(sin[t, d])
        for h in range(heads + kv_heads):
            base = h * dim
            if norm:
                rms_norm_row(qkv[t, base : base + dim], q_weight if h < heads else k_weight, eps, normed)
                for d in range(dim):
                    x[d] = widen(normed[d])
            else:
                for d in range(dim):
                    x[d] = widen(qkv[t, base + d])
            for d in range(half):
                qkv[t, base + d] = narrow(x[d] * c[d] - x[d + half] * s[d], qkv)
                qkv[t, base + d + half] = narrow(x[d + half] * c[d + half] + x[d] * s[d + half], qkv)
            if h >= heads:
                for d in range(dim):
                    k_cache[slot, h - heads, d] = narrow(widen(qkv[t, base + d]), k_cache)
        for h in range(kv_heads):
            base = (heads + kv_heads + h) * dim
            for d in range(dim):
                v_cache[slot, h, d] = narrow(widen(qkv[t, base + d]), v_cache)


@jit
def _add_rms_norm(residual, delta, weight, eps):  # noqa: ANN001, ANN202
    width = residual.shape[-1]
    res = residual.reshape(-1, width)
    dlt = delta.reshape(-1, width)
    total = np.empty_like(res)
    out = np.empty_like(res)
    eps = np.float32(eps)
    for r in numba.prange(res.shape[0]):
        add_row(res[r], dlt[r], total[r])
        rms_norm_row(total[r], weight, eps, out[r])  # the norm reads the sum as the model stores it
    return total.reshape(residual.shape), out.reshape(residual.shape)


@jit
def _silu_mul(gate_up):  # noqa: ANN001, ANN202
    width = gate_up.shape[-1]
    inter = width // 2
    rows = gate_up.reshape(-1, width)
    out = np.empty((rows.shape[0], inter), gate_up.dtype)
    for r in numba.prange(rows.shape[0]):
        for i in range(inter):
            gate = widen(rows[r, i])
            silu = widen(narrow(gate / (np.float32(1.0) + exp(-gate)), out))  # rounded where the model rounds it
            out[r, i] = narrow(silu * widen(rows[r, inter + i]), out)
    return out


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
    norm = q_weight is not None
    weights = (q_weight.detach(), k_weight.detach()) if norm else (cos[0], cos[0])  # unread without norms
    _rope_and_cache(qkv.numel(), numpy_of(qkv), numpy_of(cos), numpy_of(sin), numpy_of(weights[0]), numpy_of(weights[1]),
                    norm, eps, slots.numpy(), numpy_of(k_cache), numpy_of(v_cache), heads)


def add_rms_norm(residual: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual + delta`` and its RMS norm scaled by ``weight`` (inputs ``[..., N]``)."""
    total, out = _add_rms_norm(residual.numel(), numpy_of(residual.contiguous()), numpy_of(delta.contiguous()),
                               numpy_of(weight.detach()), eps)
    return tensor_of(total, residual.dtype), tensor_of(out, residual.dtype)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of a ``[..., 2 * I]`` tensor holding gate then up."""
    out = _silu_mul(gate_up.numel(), numpy_of(gate_up.contiguous()))
    return tensor_of(out, gate_up.dtype).view(*gate_up.shape[:-1], gate_up.shape[-1] // 2)


@functools.cache
def _compiled() -> bool:
    """Compile the layer kernels' both forms (or load them from the disk cache), once a process.

    False where numba cannot compile or run them here: callers then keep PyTorch ops.
    """
    slots = np.zeros(1, np.int64)
    try:
        for kind in (np.float32, np.int16):  # int16: bfloat16 bits
            qkv, table, weight = np.zeros((1, 6), kind), np.zeros((1, 2), kind), np.ones(2, kind)
            cache = np.zeros((2, 1, 2), kind)
            _rope_and_cache.warm(qkv, table, table, weight, weight, True, 1e-6, slots, cache, cache, 1)
            _add_rms_norm.warm(np.zeros((1, 1, 2), kind), np.zeros((1, 1, 2), kind), weight, 1e-6)
            _silu_mul.warm(np.zeros((1, 1, 4), kind))
    except Exception as exc:  # noqa: BLE001 - any failure means: PyTorch ops
        logger.warning("CPU kernels unavailable, using PyTorch ops: %r", exc)
        return False
    return True
