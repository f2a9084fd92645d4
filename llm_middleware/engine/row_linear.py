"""Linear products routed to the fastest kernel for their device and shape.

On CUDA, ``RowLinear`` sends one-row inputs (a batch-1 decode step is a chain of them) to
``row_kernels.gemv`` and everything else (prompt chunks, batches) to ``F.linear``.  On the CPU
it can run every product through oneDNN with the weight packed once into oneDNN's blocked
layout: measured on a 2-core AVX-512 machine, float32 products of 32 rows ran 4x faster than
``F.linear`` (whose BLAS repacks the weight at every call) and one-row products read weights
from memory twice as fast.  The packed copy is extra memory, so it is made only where the
model's linear weights are small next to the machine's memory.

Plain ``nn.Linear`` modules get a ``RowLinear`` as their forward; quantized layers
(subclasses) keep their own kernels.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("llm_middleware")

# Packed copies are made while all of them together stay under this share of the machine's memory.
_PACKED_MEMORY_SHARE = 0.25


@torch.inference_mode()
def _pack(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``weight`` in oneDNN's layout, or None where this build or dtype has no such product (or a wrong one)."""
    if weight.dtype not in (torch.float32, torch.bfloat16) or not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
        probe = torch.randn(2, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight.dtype)
        got = torch.ops.mkldnn._linear_pointwise(probe, packed, bias, "none", [], "")
    except (RuntimeError, AttributeError):  # a build without oneDNN's linear
        return None
    expected = F.linear(probe, weight, bias)
    tolerance = 1e-4 if weight.dtype == torch.float32 else 1e-2
    scale = float(expected.abs().float().mean()) or 1.0
    return packed if torch.allclose(got.float(), expected.float(), rtol=tolerance, atol=tolerance * scale) else None


class RowLinear:
    """``F.linear(x, weight, bias)`` through the kernel that suits ``x`` and the weight's device."""

    __slots__ = ("weight", "bias", "block_k", "gemv", "packed")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, pack: bool = False) -> None:
        self.weight = weight
        self.bias = bias
        self.block_k: int | None = None
        self.gemv: Any = None
        self.packed: torch.Tensor | None = None
        if weight.is_cuda:  # Triton is imported only where there is a GPU
            from .row_kernels import gemv, gemv_block_k

            self.block_k = gemv_block_k(weight)
            self.gemv = gemv
        elif pack and weight.device.type == "cpu":
            self.packed = _pack(weight, bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self.packed is not None and x.dtype == weight.dtype:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        if (self.block_k is not None and x.numel() == weight.shape[1] and x.stride(-1) == 1
                and x.dtype == weight.dtype and x.device == weight.device):
            return self.gemv(x, weight, self.bias, self.block_k)
        return F.linear(x, weight, self.bias)


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no packed copies
        return 0


def use_row_kernel(model: nn.Module) -> int:
    """Route the model's linear products through ``RowLinear``; return how many products were routed.

    Plain ``nn.Linear`` modules on CUDA get it as their forward where the weight fits the GEMV
    kernel.  On the CPU, if packed copies of every linear weight fit in a quarter of the
    machine's memory, plain modules get it with a packed weight, and so do the merged
    products of the fused attention and MLP layers.  Call after the layers are fused: a
    module's weight is read once, here.
    """
    modules = list(model.modules())
    fused = [f for m in modules if isinstance(getattr(f := vars(m).get("forward"), "project", None), RowLinear)]
    # The projections a fused layer merged are no longer called: they keep views of its weight.
    merged = {f.project.weight.untyped_storage().data_ptr() for f in fused}
    plain = [m for m in modules if type(m) is nn.Linear and "forward" not in vars(m)
             and m.weight.untyped_storage().data_ptr() not in merged]
    cpu_bytes = sum(m.weight.numel() * m.weight.element_size() for m in plain if m.weight.device.type == "cpu")
    cpu_bytes += sum(f.project.weight.numel() * f.project.weight.element_size() for f in fused
                     if f.project.weight.device.type == "cpu")
    pack = 0 < cpu_bytes <= _PACKED_MEMORY_SHARE * _memory_bytes()
    routed = 0
    for module in plain:
        forward = RowLinear(module.weight, module.bias, pack=pack)
        if forward.block_k is not None or forward.packed is not None:
            module.forward = forward
            routed += 1
    if pack:
        for forward in fused:
            project = RowLinear(forward.project.weight, forward.project.bias, pack=True)
            if project.packed is not None:
                forward.project = project
                routed += 1
    logger.debug("%d linear products take a faster kernel", routed)
    return routed
