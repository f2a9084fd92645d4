"""RMS norms in one fused op instead of the eight small kernels transformers writes them as.

A model's RMSNorm modules compute ``weight * (x * rsqrt(mean(x²) + eps))`` as a cast, a square,
a mean, an add, an rsqrt, two multiplies and a cast back: with four norms per layer these are
most of a decode step's kernels on a GPU, and most of its Python overhead on a CPU.
``torch.nn.functional.rms_norm`` computes the same thing in one op.  A module's ``forward``
is replaced only after the fused op reproduced it on a probe input, so norms written
differently (Gemma's ``1 + weight``, for one) keep their own code.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger("llm_middleware")


class FusedRMSNorm:
    """The replacement ``forward`` of one norm module (reads the module's weight on each call)."""

    __slots__ = ("module", "eps")

    def __init__(self, module: torch.nn.Module, eps: float) -> None:
        self.module = module
        self.eps = eps

    def __call__(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.module.weight
        return F.rms_norm(hidden_states, weight.shape, weight, self.eps)


def _epsilon(module: torch.nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return None


@torch.inference_mode()
def _reproduces(module: torch.nn.Module, fused: FusedRMSNorm, weight: torch.Tensor) -> bool:
    generator = torch.Generator(device="cpu").manual_seed(0)
    probe = torch.randn(4, weight.shape[0], generator=generator).to(weight.device, weight.dtype)
    expected = module(probe).float()
    # One rounding step of the weight's dtype: bf16 rounds the normalised value before scaling.
    tolerance = 1e-5 if weight.dtype == torch.float32 else 2 * torch.finfo(weight.dtype).eps
    return expected.shape == probe.shape and torch.allclose(fused(probe).float(), expected, rtol=tolerance, atol=tolerance)


def fuse_rms_norms(model: Any) -> int:
    """Swap every reproducible RMSNorm's ``forward`` for the fused op; return how many were swapped."""
    swapped = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        eps = _epsilon(module)
        if not type(module).__name__.endswith("RMSNorm") or eps is None:
            continue
        if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or not weight.dtype.is_floating_point:
            continue
        fused = FusedRMSNorm(module, eps)
        if not _reproduces(module, fused, weight):
            continue
        module.forward = fused
        swapped += 1
    logger.debug("fused %d RMSNorm modules", swapped)
    return swapped
