"""Attention and MLP forwards with merged projections, swapped in where they reproduce the model's.

transformers' Llama-family attention runs three products for q, k and v, then per-head norms,
rotary embedding (a dozen small ops) and the cache write; its MLP runs gate and up apart.  Here
q/k/v (and gate/up) become one matrix whose slices the original modules keep as their weights
(no extra memory), and one kernel (Triton on CUDA, numba on the CPU) does norms, rotary and the
cache write.  A module's ``forward`` is replaced only after the new one reproduced it on a probe
(two prompts through out-of-order block tables, then a decode step reading them back); attention
written differently (partial rotary, norms over all heads, biases on some projections only) keeps
the model's code.  Each layer's ``AttentionVariant`` (window, soft-cap, sinks) goes with its forward.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import nn

from ..attention.kv_cache import KVCache
from ..attention.paged import ATTENTION_NAME, PLAIN, AttentionMetadata, AttentionVariant, attend, write_cache
from ..kernels.cpu import paged_decode as cpu_attention
from ..kernels.cpu import row_ops as cpu_ops
from ..quantization.linear import PackedLinear
from .fused_norms import FusedRMSNorm
from .probe import reproduced
from .row_linear import RowLinear

logger = logging.getLogger("llm_middleware")


def _is_linear(module: Any) -> bool:
    """A plain linear layer or one packed by the engine (bitsandbytes' layers keep their own forwards)."""
    return type(module) in (nn.Linear, PackedLinear)


def _facts(linear: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and the input dtype of a linear layer, plain or packed."""
    if isinstance(linear, PackedLinear):
        return linear.device, linear.dtype
    return linear.weight.device, linear.weight.dtype


def _merge(linears: list[nn.Module]) -> RowLinear | PackedLinear | None:
    """One product for linears that read the same input; each keeps a view of its rows."""
    if all(type(lin) is PackedLinear for lin in linears):
        return PackedLinear.merge(linears)
    if any(type(lin) is not nn.Linear for lin in linears):  # bitsandbytes' layers keep their own kernels
        return None
    weights = [lin.weight for lin in linears]
    if len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1 or not weights[0].dtype.is_floating_point:
        return None
    biases = [lin.bias for lin in linears]
    if any(b is None for b in biases) and any(b is not None for b in biases):
        return None
    weight = torch.cat([w.detach() for w in weights])
    bias = torch.cat([b.detach() for b in biases]) if biases[0] is not None else None
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = nn.Parameter(weight[start : start + rows], requires_grad=False)
        if bias is not None:
            lin.bias = nn.Parameter(bias[start : start + rows], requires_grad=False)
        start += rows
    return RowLinear(weight, bias)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _FusedAttention:
    """Replacement ``forward`` of a Llama-family attention module (q/k/v/o projections)."""

    def __init__(self, module: nn.Module, project: RowLinear | PackedLinear, variant: AttentionVariant) -> None:
        self.module = module
        self.project = project
        self.weight = getattr(project, "weight", None)  # a merged full-width weight (the CPU decode step reads it)
        self.device, self.dtype = _facts(module.q_proj)
        self.in_features = module.q_proj.in_features
        self.layer = module.layer_idx
        self.variant = variant  # what the module's own forward asks the attention function for
        self.head_dim = module.head_dim
        self.heads = module.q_proj.out_features // self.head_dim
        self.kv_heads = module.k_proj.out_features // self.head_dim
        self.scaling = module.scaling
        self.q_norm = getattr(module, "q_norm", None)
        self.k_norm = getattr(module, "k_norm", None)
        norms = [getattr(n, "forward", None) for n in (self.q_norm, self.k_norm)]
        plain_norms = all(isinstance(f, FusedRMSNorm) for f in norms) and norms[0].eps == norms[1].eps
        self.eps = norms[0].eps if plain_norms else 0.0
        half = self.head_dim // 2
        # The kernels need norms (if any) that are plain RMS norms with one epsilon, and the CUDA one a
        # power-of-two half head.
        self.kernel: Any = None
        if self.head_dim % 2 == 0 and (self.q_norm is None and self.k_norm is None or plain_norms):
            if self.device.type == "cuda" and half & (half - 1) == 0:
                from ..kernels.cuda.rope_cache import rope_and_cache

                self.kernel = rope_and_cache
            elif self.device.type == "cpu" and cpu_ops.available(self.dtype):
                self.kernel = cpu_ops.rope_and_cache

    def __call__(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                 attention_mask: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        meta: AttentionMetadata = kwargs["llm_attention"]
        batch, seq = hidden_states.shape[:2]
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        qkv = self.project(hidden_states)  # [B, S, (H + 2 * KVH) * D]
        cos, sin = position_embeddings  # [B or 1, S, D]
        k_cache = meta.kv_cache.keys[self.layer]
        if self.kernel is not None and k_cache.device == qkv.device:
            norm = self.q_norm is not None
            dev = qkv.device  # the step's tensors live on the first layer's device (a no-op unless layers span devices)
            rows = meta.rope_rows
            if rows is None or rows[0].device != dev:
                rows = meta.rope_rows = tuple(t.to(dev).expand(batch, seq, dim).reshape(-1, dim).contiguous()
                                              for t in (cos, sin))
            # Triton launches on the current device
            with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
                self.kernel(
                    qkv.view(batch * seq, -1), *rows,
                    self.q_norm.weight if norm else None, self.k_norm.weight if norm else None, self.eps,
                    meta.slot_mapping.to(dev), k_cache, meta.kv_cache.values[self.layer], heads,
                )
            if meta.block_tables is not None and dev.type == "cpu":  # decode rows: the query heads lead each qkv row
                scale = self.scaling if self.scaling is not None else dim**-0.5
                variant = self.variant
                out = cpu_attention.decode_attention(
                    qkv.view(batch, -1), heads, k_cache, meta.kv_cache.values[self.layer], meta.block_tables,
                    meta.context_lens, scale, meta.kv_cache.block_size, window=variant.window, softcap=variant.softcap,
                    sinks=variant.sinks,
                )
                return self.module.o_proj.forward(out.view(batch, seq, -1)), None
            q, k, v = qkv.view(batch, seq, heads + 2 * kv_heads, dim).transpose(1, 2).split([heads, kv_heads, kv_heads], 1)
        else:
            q, k, v = qkv.view(batch, seq, heads + 2 * kv_heads, dim).split([heads, kv_heads, kv_heads], 2)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            write_cache(meta, self.layer, k, v)
        out = attend(meta, self.layer, q, k, v, self.scaling, self.variant)  # [B, S, H, D]
        return self.module.o_proj.forward(out.reshape(batch, seq, -1)), None


class _FusedMLP:
    """Replacement ``forward`` of a gated MLP: ``down(act(gate(x)) * up(x))`` with one gate/up product."""

    def __init__(self, module: nn.Module, project: RowLinear | PackedLinear) -> None:
        self.module = module
        self.project = project
        self.weight = getattr(project, "weight", None)  # a merged full-width weight (the CPU decode step reads it)
        self.device, self.dtype = _facts(module.gate_proj)
        self.in_features = module.gate_proj.in_features
        self.split = module.gate_proj.out_features
        act = module.act_fn
        self.act = act.forward if isinstance(act, nn.Module) else act  # without nn.Module.__call__'s cost
        self.silu_mul: Any = None  # one kernel for the activation and the product
        if type(module.act_fn).__name__ in ("SiLU", "SiLUActivation") and self.split == module.up_proj.out_features:
            if self.device.type == "cuda":
                from ..kernels.cuda.row_ops import silu_mul

                self.silu_mul = silu_mul
            elif self.device.type == "cpu" and cpu_ops.available(self.dtype):
                self.silu_mul = cpu_ops.silu_mul

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.project(x)
        if self.silu_mul is not None:
            return self.module.down_proj.forward(self.silu_mul(gate_up))
        gate, up = gate_up.split(self.split, -1)
        return self.module.down_proj.forward(self.act(gate) * up)


def _randn(*shape: int, like: _FusedAttention | _FusedMLP, seed: int) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(*shape, generator=generator).to(like.device, like.dtype)


# The probe: two rows of a 4-token prompt, then one decode step each, through block tables that
# are out of order (so a kernel that ignored the slot mapping would write the wrong slots).
_PROBE_BLOCK_SIZE = 4
_PROBE_TABLE = [[3, 0], [1, 4]]


def _probe_cache(attentions: list[nn.Module]) -> KVCache:
    """A small cache of its own for the probes: the engine's cache is sized after the swap."""
    first = attentions[0]
    layers = 1 + max(m.layer_idx for m in attentions)
    devices = [_facts(first.k_proj)[0]] * layers
    for m in attentions:
        devices[m.layer_idx] = _facts(m.k_proj)[0]
    return KVCache(num_layers=layers, num_blocks=5, block_size=_PROBE_BLOCK_SIZE,
                   num_kv_heads=first.k_proj.out_features // first.head_dim, head_dim=first.head_dim,
                   dtype=_facts(first.k_proj)[1], devices=devices)


@torch.inference_mode()
def _attention_reproduces(module: nn.Module, fused: _FusedAttention, rotary: nn.Module, cache: KVCache) -> bool:
    layer = fused.layer
    keys, values = cache.keys[layer], cache.values[layer]
    if keys.shape[1:] != (fused.kv_heads, fused.head_dim):
        return False
    dim, bs = fused.in_features, _PROBE_BLOCK_SIZE
    table = torch.tensor(_PROBE_TABLE)
    prompt_pos = torch.arange(4).expand(2, 4)
    decode_pos = torch.full((2, 1), 4)
    decode_args: dict[str, Any]
    if keys.device.type == "cpu" and cpu_ops.available(keys.dtype):  # decode rows as the CPU engine runs them
        decode_args = {"causal_only": False, "gather_blocks": None, "mask": None, "block_tables": table,
                       "context_lens": torch.tensor([5, 5])}
    else:
        decode_args = {"causal_only": False, "gather_blocks": table.to(keys.device), "positions": decode_pos,
                       "mask": (torch.arange(2 * bs)[None, None, None, :] <= 4).expand(2, 1, 1, 2 * bs).to(keys.device)}
    steps = []
    for positions, meta_args in (
        (prompt_pos, {"causal_only": True, "gather_blocks": None, "mask": None}),
        (decode_pos, decode_args),
    ):
        slots = (table.gather(1, positions // bs) * bs + positions % bs).reshape(-1).to(keys.device)
        hidden = _randn(2, positions.shape[1], dim, like=fused, seed=len(steps))
        meta = AttentionMetadata(kv_cache=cache, slot_mapping=slots, **meta_args)
        steps.append((hidden, rotary(hidden, positions.to(hidden.device)), meta))
    results = []
    try:
        for forward in (lambda **kw: type(module).forward(module, **kw), fused):
            keys.zero_()
            values.zero_()
            outs = [forward(hidden_states=h, position_embeddings=pe, attention_mask=None, llm_attention=meta)[0]
                    for h, pe, meta in steps]
            results.append([*outs, keys.clone(), values.clone()])
    finally:
        keys.zero_()
        values.zero_()
    return all(reproduced(a, e, 1e-4) for a, e in zip(results[1], results[0]))


@torch.inference_mode()
def _mlp_reproduces(module: nn.Module, fused: _FusedMLP) -> bool:
    probe = _randn(2, 3, fused.in_features, like=fused, seed=0)
    return reproduced(fused(probe), type(module).forward(module, probe), 1e-4)


def _is_attention(module: nn.Module) -> bool:
    # Plain or engine-packed linears only: bitsandbytes' keep their own kernels, and their packed
    # weights' shapes say nothing about the heads.
    return (all(_is_linear(getattr(module, n, None)) for n in ("q_proj", "k_proj", "v_proj"))
            and isinstance(getattr(module, "o_proj", None), (nn.Linear, PackedLinear))
            and isinstance(getattr(module, "layer_idx", None), int) and isinstance(getattr(module, "head_dim", None), int)
            and getattr(getattr(module, "config", None), "_attn_implementation", None) == ATTENTION_NAME)


def _is_gated_mlp(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, n, None), (nn.Linear, PackedLinear))
               for n in ("gate_proj", "up_proj", "down_proj")) and callable(
        getattr(module, "act_fn", None)
    )


def _unmerge(linears: list[nn.Module]) -> None:
    """Give each linear its own storage back (a swap that did not reproduce must cost no memory)."""
    for lin in linears:
        if isinstance(lin, PackedLinear):
            lin.own()
            continue
        lin.weight = nn.Parameter(lin.weight.detach().clone(), requires_grad=False)
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=False)


def _swap(module: nn.Module, linears: list[nn.Linear], build: Any, reproduces: Any) -> bool:
    """Merge ``linears``, build the new forward and keep it if it reproduces; else leave the module as it was."""
    merged = None
    try:
        merged = _merge(linears)
        if merged is None:
            return False
        fused = build(merged)
        if reproduces(fused):
            module.forward = fused
            return True
    except Exception as exc:  # noqa: BLE001 - any failure means: keep the model's own forward
        logger.warning("%s keeps the model's own forward: %r", type(module).__name__, exc)
    if merged is not None:
        _unmerge(linears)
    return False


def fuse_layers(model: nn.Module, variants: dict[int, AttentionVariant]) -> tuple[int, int]:
    """Swap reproducible attention and MLP forwards; return how many of each were swapped.

    ``variants``: what each layer's attention computes (``model.attention_features.read_variants``).
    Call after ``fuse_rms_norms`` (the attention kernel takes over fused per-head norms only)
    and before the KV cache is sized (merging copies one layer's weights at a time).
    """
    rotary = next((m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")), None)
    modules = list(model.modules())
    attentions = [m for m in modules if _is_attention(m)] if rotary is not None else []
    cache = _probe_cache(attentions) if attentions else None
    swapped_attention = sum(
        _swap(m, [m.q_proj, m.k_proj, m.v_proj],
              lambda project, m=m: _FusedAttention(m, project, variants.get(m.layer_idx, PLAIN)),
              lambda fused, m=m: _attention_reproduces(m, fused, rotary, cache))
        for m in attentions
    )
    swapped_mlp = sum(
        _swap(m, [m.gate_proj, m.up_proj], lambda project, m=m: _FusedMLP(m, project),
              lambda fused, m=m: _mlp_reproduces(m, fused))
        for m in modules if _is_gated_mlp(m)
    )
    logger.debug("fused %d attention and %d MLP modules", swapped_attention, swapped_mlp)
    return swapped_attention, swapped_mlp
