"""Attention and MLP forwards with merged projections, swapped in where they reproduce the model's.

transformers' Llama-family attention runs three matrix products for q, k and v, then the
per-head norms, the rotary embedding (a dozen small ops) and the cache write; its MLP runs
the gate and up products separately.  At batch 1 on a GPU these small kernels and the extra
matrix products are a third of a decode step.  Here the q/k/v weights (and gate/up) are
concatenated into one matrix whose slices the original modules keep as their weights (no
extra memory), and on CUDA one Triton kernel does norms, rotary and cache write.

Like the fused norms, a module's ``forward`` is replaced only after the new one reproduced it
on a probe (outputs and cache contents), so attention written differently (partial rotary,
norms over all heads, biases on some projections only) keeps the model's own code.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ATTENTION_NAME, AttentionMetadata, attend, write_cache
from .fused_norms import FusedRMSNorm
from .kv_cache import KVCache

logger = logging.getLogger("llm_middleware")


def _merge(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """One weight (and bias) for linears that read the same input; each keeps a view of its rows."""
    if any(type(lin) is not nn.Linear for lin in linears):  # quantized layers keep their own kernels
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
    return weight, bias


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _FusedAttention:
    """Replacement ``forward`` of a Llama-family attention module (q/k/v/o projections)."""

    def __init__(self, module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.module = module
        self.weight = weight
        self.bias = bias
        self.layer = module.layer_idx
        self.head_dim = module.head_dim
        self.heads = module.q_proj.weight.shape[0] // self.head_dim
        self.kv_heads = module.k_proj.weight.shape[0] // self.head_dim
        self.scaling = module.scaling
        self.q_norm = getattr(module, "q_norm", None)
        self.k_norm = getattr(module, "k_norm", None)
        norm = self.q_norm.forward if self.q_norm is not None else None
        self.eps = norm.eps if isinstance(norm, FusedRMSNorm) else 0.0
        # The kernel needs a power-of-two half head and the norm's formula to be the plain RMS norm.
        self.use_kernel = (
            weight.is_cuda and self.head_dim % 2 == 0 and (self.head_dim // 2) & (self.head_dim // 2 - 1) == 0
            and (self.q_norm is None or (isinstance(norm, FusedRMSNorm) and isinstance(self.k_norm.forward, FusedRMSNorm)))
        )

    def __call__(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                 attention_mask: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        meta: AttentionMetadata = kwargs["llm_attention"]
        batch, seq = hidden_states.shape[:2]
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        qkv = F.linear(hidden_states, self.weight, self.bias)  # [B, S, (H + 2 * KVH) * D]
        cos, sin = position_embeddings  # [B or 1, S, D]
        k_cache = meta.kv_cache.keys[self.layer]
        if self.use_kernel and k_cache.device == qkv.device:
            from .rope_cache_kernel import rope_and_cache

            norm = self.q_norm is not None
            dev = qkv.device  # the step's tensors live on the first layer's device (a no-op unless layers span devices)
            cos, sin = (t.to(dev).expand(batch, seq, dim).reshape(-1, dim) for t in (cos, sin))
            rope_and_cache(
                qkv.view(batch * seq, -1), cos, sin,
                self.q_norm.weight if norm else None, self.k_norm.weight if norm else None, self.eps,
                meta.slot_mapping.to(dev), k_cache, meta.kv_cache.values[self.layer], heads,
            )
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
        out = attend(meta, self.layer, q, k, v, self.scaling)  # [B, S, H, D]
        return self.module.o_proj(out.reshape(batch, seq, -1)), None


class _FusedMLP:
    """Replacement ``forward`` of a gated MLP: ``down(act(gate(x)) * up(x))`` with one gate/up product."""

    def __init__(self, module: nn.Module, weight: torch.Tensor) -> None:
        self.module = module
        self.weight = weight
        self.split = module.gate_proj.weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, self.weight).split(self.split, -1)
        return self.module.down_proj(self.module.act_fn(gate) * up)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    # A few roundings of a 16-bit dtype: the fused path rounds once where the model rounds each op.
    tolerance = 1e-4 if expected.dtype == torch.float32 else 4 * torch.finfo(expected.dtype).eps
    scale = float(expected.abs().max()) or 1.0
    return actual.shape == expected.shape and torch.allclose(
        actual.float(), expected.float(), rtol=tolerance, atol=tolerance * scale
    )


def _probe(dim: int, weight: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(0)
    return torch.randn(1, 4, dim, generator=generator).to(weight.device, weight.dtype)


@torch.inference_mode()
def _attention_reproduces(module: nn.Module, fused: _FusedAttention, rotary: nn.Module, kv_cache: KVCache) -> bool:
    hidden = _probe(module.q_proj.weight.shape[1], fused.weight)
    positions = torch.arange(3, 3 + hidden.shape[1], device=hidden.device)[None, :]
    position_embeddings = rotary(hidden, positions)
    # The first slots: no request exists yet while the model is being prepared.
    slots = torch.arange(hidden.shape[1], device=kv_cache.keys[fused.layer].device)
    meta = AttentionMetadata(kv_cache=kv_cache, slot_mapping=slots, gather_blocks=None, mask=None, causal_only=True)
    results = []
    for forward in (lambda **kw: type(module).forward(module, **kw), fused):
        out = forward(hidden_states=hidden, position_embeddings=position_embeddings, attention_mask=None,
                      llm_attention=meta)[0]
        cached = [cache[fused.layer][slots].clone() for cache in (kv_cache.keys, kv_cache.values)]
        results.append((out, *cached))
    for cache in (kv_cache.keys, kv_cache.values):
        cache[fused.layer][slots] = 0
    return all(_close(a, e) for a, e in zip(results[1], results[0]))


@torch.inference_mode()
def _mlp_reproduces(module: nn.Module, fused: _FusedMLP) -> bool:
    probe = _probe(fused.weight.shape[1], fused.weight)
    return _close(fused(probe), type(module).forward(module, probe))


def _is_attention(module: nn.Module) -> bool:
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    return (all(isinstance(getattr(module, n, None), nn.Linear) for n in names)
            and isinstance(getattr(module, "layer_idx", None), int) and isinstance(getattr(module, "head_dim", None), int)
            and getattr(getattr(module, "config", None), "_attn_implementation", None) == ATTENTION_NAME)


def _is_gated_mlp(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in ("gate_proj", "up_proj", "down_proj")) and callable(
        getattr(module, "act_fn", None)
    )


def _unmerge(linears: list[nn.Linear]) -> None:
    """Give each linear its own storage back (a swap that did not reproduce must cost no memory)."""
    for lin in linears:
        lin.weight = nn.Parameter(lin.weight.detach().clone(), requires_grad=False)
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=False)


def fuse_layers(model: nn.Module, kv_cache: KVCache) -> tuple[int, int]:
    """Swap reproducible attention and MLP forwards; return how many of each were swapped.

    Call after ``fuse_rms_norms`` (the attention kernel takes over fused per-head norms only)
    and before any request runs (the probe writes the cache's first slots, then clears them).
    """
    rotary = next((m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")), None)
    attentions = mlps = 0
    for module in list(model.modules()):
        if rotary is not None and _is_attention(module):
            linears = [module.q_proj, module.k_proj, module.v_proj]
            merged = _merge(linears)
            if merged is None:
                continue
            fused = _FusedAttention(module, *merged)
            try:
                ok = _attention_reproduces(module, fused, rotary, kv_cache)
            except Exception as exc:  # noqa: BLE001 - any failure means: keep the model's own forward
                logger.warning("attention of layer %s keeps the model's own forward: %r", module.layer_idx, exc)
                ok = False
            if ok:
                module.forward = fused
                attentions += 1
            else:
                _unmerge(linears)
        elif _is_gated_mlp(module):
            linears = [module.gate_proj, module.up_proj]
            merged = _merge(linears)
            if merged is None:
                continue
            fused_mlp = _FusedMLP(module, merged[0]) if merged[1] is None else None
            if fused_mlp is not None and _mlp_reproduces(module, fused_mlp):
                module.forward = fused_mlp
                mlps += 1
            else:
                _unmerge(linears)
    logger.debug("fused %d attention and %d MLP modules", attentions, mlps)
    return attentions, mlps
