"""Pre-norm decoder layers whose residual adds run fused with the norm that follows each.

A Llama-family layer adds the attention output to the residual stream and normalises the sum
for the MLP, then adds the MLP output, which the next layer normalises first thing.  On CUDA
one kernel does each add together with the norm after it: two kernels a layer instead of four.

The norm after a layer's last add belongs to the next layer (or to the model's final norm), so
the layer hands the normalised sum over: that norm returns it when it is called on the very
tensor object the layer returned, and computes it itself otherwise (a model that changes the
hidden state between layers makes a new tensor).  A layer's ``forward`` is replaced only after
the new one reproduced the model's on a probe, with stand-ins for its attention and MLP.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..kernels.cpu import row_ops as cpu_ops
from .fused_norms import FusedRMSNorm
from .probe import reproduced

logger = logging.getLogger("llm_middleware")


class _Handoff:
    """A layer's output and its normalised form, waiting for the norm that would compute it."""

    __slots__ = ("hidden", "normed")

    def __init__(self) -> None:
        self.hidden: torch.Tensor | None = None
        self.normed: torch.Tensor | None = None

    def take(self, hidden: torch.Tensor) -> torch.Tensor | None:
        normed = self.normed if self.hidden is hidden else None
        self.hidden = self.normed = None  # hold no step's tensors longer than needed
        return normed


class _HandedNorm:
    """Replacement ``forward`` of a norm that follows a fused layer: returns the handed-over result."""

    __slots__ = ("norm", "handoff")

    def __init__(self, norm: FusedRMSNorm, handoff: _Handoff) -> None:
        self.norm = norm
        self.handoff = handoff

    def __call__(self, hidden_states: torch.Tensor) -> torch.Tensor:
        normed = self.handoff.take(hidden_states)
        return normed if normed is not None else self.norm(hidden_states)


def _add_norm(kernel: Any, residual: torch.Tensor, delta: torch.Tensor,
              norm: FusedRMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
    weight = norm.module.weight
    if (kernel is not None and residual.shape == delta.shape and residual.dtype == delta.dtype == weight.dtype
            and residual.stride(-1) == 1 and delta.stride(-1) == 1):
        return kernel(residual, delta, weight, norm.eps)
    total = residual + delta
    return total, norm(total)


class _FusedDecoderLayer:
    """Replacement ``forward`` of a pre-norm decoder layer; hands its output's norm to ``next_norm``."""

    def __init__(self, layer: nn.Module, next_norm: FusedRMSNorm, handoff: _Handoff) -> None:
        self.layer = layer
        self.post_norm: FusedRMSNorm = layer.post_attention_layernorm.forward
        self.next_norm = next_norm
        self.handoff = handoff
        self.kernel: Any = None
        weight = next_norm.module.weight
        if weight.is_cuda:  # Triton is imported only where there is a GPU
            from ..kernels.cuda.row_ops import add_rms_norm

            self.kernel = add_rms_norm
        elif weight.device.type == "cpu" and cpu_ops.available(weight.dtype):
            self.kernel = cpu_ops.add_rms_norm

    def __call__(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        layer = self.layer
        if args:  # called in a way the probe did not see
            return type(layer).forward(layer, hidden_states, *args, **kwargs)
        # Sublayers' forwards are called directly: nn.Module.__call__ costs microseconds a call, and the
        # engine's model carries no hooks (accelerate's replace ``forward`` itself).
        attention = layer.self_attn.forward(hidden_states=layer.input_layernorm.forward(hidden_states), **kwargs)[0]
        hidden, normed = _add_norm(self.kernel, hidden_states, attention, self.post_norm)
        hidden, normed = _add_norm(self.kernel, hidden, layer.mlp.forward(normed), self.next_norm)
        self.handoff.hidden, self.handoff.normed = hidden, normed
        return hidden


def _stand_in_attention(hidden_states: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, None]:
    return 1.5 * torch.tanh(hidden_states) + 0.25, None


def _stand_in_mlp(x: torch.Tensor) -> torch.Tensor:
    return 2 * torch.sin(x) - 0.5


@torch.inference_mode()
def _reproduces(layer: nn.Module, fused: _FusedDecoderLayer) -> bool:
    """Layer output and handed-over norm against the model's forward, with stand-in sublayers."""
    weight = fused.next_norm.module.weight
    generator = torch.Generator(device="cpu").manual_seed(0)
    probe = torch.randn(2, 3, weight.shape[0], generator=generator).to(weight.device, weight.dtype)
    saved = [(m, vars(m).get("forward")) for m in (layer.self_attn, layer.mlp)]
    layer.self_attn.forward, layer.mlp.forward = _stand_in_attention, _stand_in_mlp
    try:
        expected = type(layer).forward(layer, probe, attention_mask=None, position_embeddings=None)
        actual = fused(probe, attention_mask=None, position_embeddings=None)
        handed = fused.handoff.take(actual)
        return (isinstance(expected, torch.Tensor) and handed is not None and reproduced(actual, expected, 1e-5)
                and reproduced(handed, fused.next_norm(expected), 1e-5))
    finally:
        for module, forward in saved:
            if forward is None:
                del module.forward
            else:
                module.forward = forward


def _plain_norm(module: Any) -> FusedRMSNorm | None:
    """The fused RMS norm a module runs (also where a layer before it hands its result over)."""
    forward = getattr(module, "forward", None) if isinstance(module, nn.Module) else None
    if isinstance(forward, _HandedNorm):
        forward = forward.norm
    return forward if isinstance(forward, FusedRMSNorm) else None


def _stacks(model: nn.Module) -> list[tuple[nn.ModuleList, nn.Module]]:
    """Each decoder stack's layers and the final norm after them."""
    return [(m.layers, m.norm) for m in model.modules()
            if isinstance(getattr(m, "layers", None), nn.ModuleList) and _plain_norm(getattr(m, "norm", None))]


def fuse_residuals(model: nn.Module) -> int:
    """Swap reproducible pre-norm decoder layers' forwards; return how many were swapped.

    Call after ``fuse_rms_norms``: only layers whose norms are fused plain RMS norms qualify.
    """
    swapped = 0
    for layers, final_norm in _stacks(model):
        norms_after = [getattr(layer, "input_layernorm", None) for layer in layers[1:]] + [final_norm]
        for layer, after in zip(layers, norms_after):
            next_norm = _plain_norm(after)
            if (next_norm is None or _plain_norm(getattr(layer, "input_layernorm", None)) is None
                    or _plain_norm(getattr(layer, "post_attention_layernorm", None)) is None
                    or not isinstance(getattr(layer, "self_attn", None), nn.Module)
                    or not isinstance(getattr(layer, "mlp", None), nn.Module)):
                continue
            handoff = _Handoff()
            fused = _FusedDecoderLayer(layer, next_norm, handoff)
            try:
                reproduces = _reproduces(layer, fused)
            except Exception as exc:  # noqa: BLE001 - any failure means: keep the model's own forward
                logger.warning("%s keeps the model's own forward: %r", type(layer).__name__, exc)
                reproduces = False
            if reproduces:
                layer.forward = fused
                after.forward = _HandedNorm(next_norm, handoff)
                swapped += 1
    logger.debug("fused the residual adds of %d decoder layers", swapped)
    return swapped
