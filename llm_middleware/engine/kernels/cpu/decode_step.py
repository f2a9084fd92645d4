"""The whole decoder forward of one-token rows as one numba function: the CPU's one-call decode step.

Embedding, each layer's norms, products, rotary embedding, cache write and attention, and the
output layer run in one compiled call whose products run over numba's threads with little in
between to let those threads sleep.  Its products are plain loops (four weight rows at a time,
each read once for every row of the batch), which keep up with memory for a few rows but not
with a BLAS GEMM for many: ``model.cpu_decoder`` times both and serves the batch sizes this wins.
A bfloat16 model's activations are kept as bfloat16 bits, each rounded where the model's op rounds
it, with float32 sums in between (as ``row_ops`` does).
"""

from __future__ import annotations

from typing import Any

from . import paged_decode as cpu_attention
from . import row_ops as cpu_ops
from .numba_support import OPTIONS, cache_named, numba

if numba is not None:
    import numpy as np

    def _njit(function: Any) -> Any:
        return numba.njit(**OPTIONS)(cache_named(function))

    def _njit_parallel(function: Any) -> Any:
        return numba.njit(parallel=True, **OPTIONS)(cache_named(function))

    # The layers' kernel for per-head norms, rotary embedding and cache write, in its calling-thread form,
    # and their attention kernels over numba's threads.
    _rope_and_cache, _silu_mul = cpu_ops._rope_and_cache.alone, cpu_ops._silu_mul.alone
    _scores, _softmax = cpu_attention._scores.parallel, cpu_attention._softmax.parallel
    _weighted_values = cpu_attention._weighted_values.parallel
    from .numba_support import add_row, narrow, rms_norm_row, widen
else:  # nothing compiles or calls the kernels then
    def _njit(function: Any) -> Any:
        return function

    _njit_parallel = _njit


@_njit_parallel
def _project(weight, x, out):  # noqa: ANN001, ANN202
    """``out[b] = weight @ x[b]``: four weight rows at a time, each read once for all of ``x``'s rows."""
    batch, n, k = x.shape[0], weight.shape[0], weight.shape[1]
    for group in numba.prange((n + 3) // 4):
        j = 4 * group
        if j + 4 <= n:
            for b in range(batch):
                a0 = a1 = a2 = a3 = np.float32(0.0)
                for i in range(k):
                    xi = widen(x[b, i])
                    a0 += widen(weight[j, i]) * xi
                    a1 += widen(weight[j + 1, i]) * xi
                    a2 += widen(weight[j + 2, i]) * xi
                    a3 += widen(weight[j + 3, i]) * xi
                out[b, j], out[b, j + 1] = narrow(a0, out), narrow(a1, out)
                out[b, j + 2], out[b, j + 3] = narrow(a2, out), narrow(a3, out)
        else:
            for row in range(j, n):
                for b in range(batch):
                    acc = np.float32(0.0)
                    for i in range(k):
                        acc += widen(weight[row, i]) * widen(x[b, i])
                    out[b, row] = narrow(acc, out)


@_njit  # its products and attention run over numba's threads
def step(tokens, cos, sin, slots, tables, lengths, embed, qkv_w, o_w, gate_up_w, down_w, input_w, post_w, q_w, k_w,
          eps, qk_eps, norm_qk, windows, final_w, final_eps, lm_w, k_caches, v_caches, heads, scale, block_size):  # noqa: ANN001, ANN202
    """Logits ``[B, vocab]`` of one new token per row: the decoder's whole forward.

    Per-layer weights come as tuples (one array per layer); ``eps[l]`` holds layer ``l``'s
    input and post-attention norm epsilons, ``windows[l]`` its sliding window (0: none).
    Activations are arrays of the weights' element type (float32, or bfloat16 bits).
    """
    batch, hidden = tokens.shape[0], embed.shape[1]
    inter = down_w[0].shape[1]
    kind = embed.dtype
    x = np.empty((batch, hidden), kind)
    normed = np.empty((batch, hidden), kind)
    delta = np.empty((batch, hidden), kind)
    qkv = np.empty((batch, qkv_w[0].shape[0]), kind)
    attended = np.empty((batch, o_w[0].shape[1]), kind)
    gate_up = np.empty((batch, 2 * inter), kind)
    scores = np.empty((batch, heads, tables.shape[1] * block_size), np.float32)
    no_sinks = np.empty(0, np.float32)
    for b in range(batch):
        x[b] = embed[tokens[b]]
    for layer in range(len(qkv_w)):
        k_cache, v_cache = k_caches[layer], v_caches[layer]
        for b in range(batch):
            rms_norm_row(x[b], input_w[layer], eps[layer, 0], normed[b])
        _project(qkv_w[layer], normed, qkv)
        _rope_and_cache(qkv, cos, sin, q_w[layer], k_w[layer], norm_qk, qk_eps[layer], slots, k_cache, v_cache, heads)
        _scores(qkv, heads, k_cache, tables, lengths, windows[layer], scale, 0.0, block_size, scores)
        _softmax(scores, lengths, windows[layer], no_sinks)
        _weighted_values(scores, v_cache, tables, lengths, windows[layer], block_size, attended)
        _project(o_w[layer], attended, delta)
        for b in range(batch):
            add_row(x[b], delta[b], x[b])
            rms_norm_row(x[b], post_w[layer], eps[layer, 1], normed[b])
        _project(gate_up_w[layer], normed, gate_up)
        _project(down_w[layer], _silu_mul(gate_up), delta)
        for b in range(batch):
            add_row(x[b], delta[b], x[b])
    for b in range(batch):
        rms_norm_row(x[b], final_w, final_eps, normed[b])
    logits = np.empty((batch, lm_w.shape[0]), kind)
    _project(lm_w, normed, logits)
    return logits
