"""The CPU decode step of a few rows as one numba call (``kernels.cpu.decode_step``): the CPU's side of ``cuda_decoder``.

A one-row decode step through the model's modules is some hundred calls (products, the numba
kernels of each layer, the PyTorch ops and Python between them), and OpenMP's threads fall asleep
between products and wake for the next.  The one-call step runs the whole forward in one compiled
function instead.  Its products keep up with memory for a few rows but not with a BLAS GEMM for
many, so at start-up both paths run decode steps of 1, 2, 4, 8 and 16 rows and this one serves
the sizes it ran faster.  It serves Llama-family decoders in float32 or bfloat16 whose layers the
engine fused (merged q/k/v and gate/up projections without biases, plain RMS norms, SiLU gating,
the rotary kernel; softmax attention, within a sliding window or not), and only where its logits
reproduced the model's on a probe.
"""

from __future__ import annotations

import logging
import statistics
import time
import types
from typing import Any

import torch
from torch import nn

from ..attention.kv_cache import KVCache
from ..kernels.cpu import decode_step
from ..kernels.cpu import row_ops as cpu_ops
from ..kernels.cpu.numba_support import numba, numpy_of, tensor_of
from ..patching.fused_layers import _FusedAttention, _FusedMLP
from ..patching.fused_residuals import _FusedDecoderLayer, _plain_norm, _stacks
from ..patching.probe import reproduced
from ..scheduling.sequence import Sequence

if numba is not None:
    import numpy as np

logger = logging.getLogger("llm_middleware")

# The batch sizes timed at start-up.
_TIMED_ROWS = (1, 2, 4, 8, 16)
_PROBE_TOKENS = 20
_ROUNDS = 3
_WARM_CALLS = 3


def _array(tensor: torch.Tensor) -> Any:
    """A numpy view of a CPU tensor's memory (no copy; the tensor must be contiguous; bfloat16 as its bits)."""
    return numpy_of(tensor.detach())


class CpuDecoder:
    """Runs one-token decode steps of up to ``max_rows`` rows on the CPU (``max_rows`` is set by ``choose_rows``)."""

    def __init__(self, model: nn.Module, kv_cache: KVCache, rotary: nn.Module, parts: dict[str, Any], heads: int,
                 scale: float) -> None:
        self.rotary = rotary
        self.block_size = kv_cache.block_size
        self.max_rows = 0  # set by ``choose_rows``: nothing runs here before it measured
        self.heads = heads
        self.scale = np.float32(scale)
        self.parts = parts
        self.k_caches = tuple(_array(k) for k in kv_cache.keys)
        self.v_caches = tuple(_array(v) for v in kv_cache.values)
        self._dtype_probe = model.get_input_embeddings().weight[:1]
        self.dtype = self._dtype_probe.dtype

    @classmethod
    def build(cls, model: nn.Module, kv_cache: KVCache) -> CpuDecoder | None:
        """A decoder for ``model`` where its layers are the fused kinds this step computes; else None."""
        if numba is None or not cpu_ops.parallel():
            return None
        embedding, output = model.get_input_embeddings(), model.get_output_embeddings()
        stacks = _stacks(model)
        rotary = next((m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")), None)
        if (len(stacks) != 1 or rotary is None or type(embedding) is not nn.Embedding or type(output) is not nn.Linear
                or output.bias is not None):
            return None
        layers, final_norm = stacks[0]
        parts: dict[str, list[Any]] = {name: [] for name in ("qkv_w", "o_w", "gate_up_w", "down_w", "input_w", "post_w",
                                                             "q_w", "k_w", "eps", "qk_eps", "windows")}
        shapes = set()
        for index, layer in enumerate(layers):
            fused = vars(layer).get("forward")
            attention, mlp = vars(layer.self_attn).get("forward"), vars(layer.mlp).get("forward")
            if not (isinstance(fused, _FusedDecoderLayer) and isinstance(attention, _FusedAttention)
                    and isinstance(mlp, _FusedMLP) and _plain_layer(index, attention, mlp)):
                return None
            in_norm, post_norm = _plain_norm(layer.input_layernorm), fused.post_norm
            norms = attention.q_norm is not None
            parts["qkv_w"].append(attention.weight)
            parts["o_w"].append(attention.module.o_proj.weight)
            parts["gate_up_w"].append(mlp.weight)
            parts["down_w"].append(mlp.module.down_proj.weight)
            parts["input_w"].append(in_norm.module.weight)
            parts["post_w"].append(post_norm.module.weight)
            parts["q_w"].append(attention.q_norm.weight if norms else in_norm.module.weight)  # unread without norms
            parts["k_w"].append(attention.k_norm.weight if norms else in_norm.module.weight)
            parts["eps"].append((in_norm.eps, post_norm.eps))
            parts["qk_eps"].append(attention.eps)
            parts["windows"].append(attention.variant.window or 0)
            shapes.add((attention.heads, attention.kv_heads, attention.head_dim, norms,
                        attention.scaling if attention.scaling is not None else attention.head_dim**-0.5))
        if len(shapes) != 1:
            return None
        heads, _, _, norm_qk, scale = shapes.pop()
        final = _plain_norm(final_norm)
        weights = [t for name in ("qkv_w", "o_w", "gate_up_w", "down_w", "input_w", "post_w", "q_w", "k_w")
                   for t in parts[name]] + [embedding.weight, output.weight, final.module.weight]
        dtype = embedding.weight.dtype
        caches = [*kv_cache.keys, *kv_cache.values]
        if dtype not in (torch.float32, torch.bfloat16) or any(
                t.dtype != dtype or t.device.type != "cpu" or not t.is_contiguous() for t in weights + caches):
            return None
        arrays: dict[str, Any] = {name: tuple(_array(t) for t in parts[name]) for name in parts if name.endswith("_w")}
        arrays.update(eps=np.array(parts["eps"], np.float32), qk_eps=np.array(parts["qk_eps"], np.float32),
                      windows=np.array(parts["windows"], np.int64), norm_qk=norm_qk,
                      final_w=_array(final.module.weight), final_eps=np.float32(final.eps),
                      embed=_array(embedding.weight), lm_w=_array(output.weight))
        return cls(model, kv_cache, rotary, arrays, heads, scale)

    @torch.inference_mode()
    def run(self, seqs: list[Sequence], previous: torch.Tensor | None = None, sources: list[int] | None = None) -> torch.Tensor:
        """Logits ``[len(seqs), vocab]`` of each sequence's next token (its last token is computed now).

        A row whose last token is a pending draw takes it from ``previous[sources[row]]``.
        """
        bs = self.block_size
        positions = [s.num_computed for s in seqs]
        tokens = np.array([s.token_ids[-1] for s in seqs], np.int64)
        if previous is not None and sources is not None:
            for row, source in enumerate(sources):
                if source >= 0:
                    tokens[row] = int(previous[source])
        blocks = max(len(s.block_table) for s in seqs)
        tables = np.zeros((len(seqs), blocks), np.int64)
        for row, s in enumerate(seqs):
            tables[row, : len(s.block_table)] = s.block_table
        slots = np.array([s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, positions)], np.int64)
        lengths = np.array(positions, np.int64) + 1
        cos, sin = self.rotary(self._dtype_probe, torch.tensor(positions)[None])  # [1, B, D]
        p = self.parts
        logits = decode_step.step(tokens, _array(cos[0].contiguous()), _array(sin[0].contiguous()), slots, tables, lengths,
                       p["embed"], p["qkv_w"], p["o_w"], p["gate_up_w"], p["down_w"], p["input_w"], p["post_w"],
                       p["q_w"], p["k_w"], p["eps"], p["qk_eps"], p["norm_qk"], p["windows"], p["final_w"],
                       p["final_eps"], p["lm_w"],
                       self.k_caches, self.v_caches, self.heads, self.scale, bs)
        return tensor_of(logits, self.dtype)


def _plain_layer(index: int, attention: _FusedAttention, mlp: _FusedMLP) -> bool:
    """Whether a fused layer is the kind ``decode_step.step`` computes: no biases, the CPU rotary kernel, SiLU gating,
    softmax attention (within a sliding window or not)."""
    module = attention.module
    return (attention.layer == index and attention.kernel is cpu_ops.rope_and_cache
            and attention.variant.plain_softmax
            and attention.project.bias is None and module.o_proj.bias is None
            and attention.heads % attention.kv_heads == 0
            and mlp.project.bias is None and mlp.module.down_proj.bias is None
            and type(mlp.module.act_fn).__name__ in ("SiLU", "SiLUActivation") and 2 * mlp.split == mlp.weight.shape[0])


def choose_rows(decoder: CpuDecoder, runner: Any, max_rows: int) -> int:
    """Check ``decoder`` against the model's own decode step and set the row counts it serves.

    Probe sequences of ``_PROBE_TOKENS`` random tokens each (their blocks out of order) are
    prefilled through ``runner`` (a ``ModelRunner``); then 1, 2, 4, 8 and 16 of them (up to
    ``max_rows``) run a decode step both ways: the logits must agree, and the decoder serves
    batches up to the last size it ran faster than the model's modules (the first it lost ends the probe).
    The probe's cache blocks are zeroed afterwards.  Returns ``decoder.max_rows`` (0: none).
    """
    kv_cache = runner.kv_cache
    bs = kv_cache.block_size
    per_seq = -(-(_PROBE_TOKENS + 1) // bs)
    rows_timed = [r for r in _TIMED_ROWS if r <= max_rows]
    needed = per_seq * max(rows_timed, default=0)
    decoder.max_rows = 0
    if not rows_timed or needed > kv_cache.num_blocks:
        return 0
    generator = torch.Generator().manual_seed(0)
    vocab = decoder.parts["embed"].shape[0]
    blocks = list(reversed(range(needed)))  # out of order: a kernel that ignored the tables would read the wrong slots
    seqs = [types.SimpleNamespace(token_ids=torch.randint(vocab, (_PROBE_TOKENS + 1,), generator=generator).tolist(),
                                  num_computed=0, block_table=blocks[row * per_seq : (row + 1) * per_seq])
            for row in range(max(rows_timed))]
    served = 0
    try:
        for rows in rows_timed:
            batch = seqs[:rows]
            fresh = [s for s in batch if not s.num_computed]  # prefilled as the sizes grow: a loss ends the probe
            runner.run([(s, _PROBE_TOKENS) for s in fresh])
            for s in fresh:
                s.num_computed = _PROBE_TOKENS

            def modules_step(batch: list[Any] = batch) -> torch.Tensor:
                return runner.run([(s, 1) for s in batch])

            if not reproduced(decoder.run(batch), modules_step(), 1e-4):
                logger.warning("the CPU decode step disagrees with the model's here; not using it")
                served = 0
                break
            model_time, own_time = _median_time(modules_step), _median_time(lambda: decoder.run(batch))
            logger.debug("decode step of %d rows: %.2f ms through the model's modules, %.2f ms as one call",
                         rows, 1e3 * model_time, 1e3 * own_time)
            if own_time >= model_time:
                break
            served = rows
    except Exception as exc:  # noqa: BLE001 - any failure means: the model's own step
        logger.warning("the CPU decode step failed here, using the model's: %r", exc)
        served = 0
    finally:
        for layer_cache in (*kv_cache.keys, *kv_cache.values):
            kv_cache.blocks(layer_cache)[:needed].zero_()
    decoder.max_rows = served
    return served


def _median_time(step: Any) -> float:
    # Untimed calls first: after the other path ran, its threads (PyTorch's OpenMP pool or numba's,
    # two runtimes) spin on the same cores for a while and slow the first calls down.
    for _ in range(_WARM_CALLS):
        step()
    times = []
    for _ in range(_ROUNDS):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    return statistics.median(times)
