"""Linear products routed to the fastest kernel for their device and shape.

On CUDA, ``RowLinear`` sends one-row inputs (a batch-1 decode step is a chain of them) to
``kernels.cuda.row_ops.gemv`` and everything else (prompt chunks, batches) to ``F.linear``.  On
the CPU it runs the kernels ``kernels.cpu.products`` timed fastest on this machine, one for
one-row inputs and one for more rows.

Plain ``nn.Linear`` modules get a ``RowLinear`` as their forward; quantized layers
(subclasses) keep their own kernels.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.cpu import products as cpu_products

logger = logging.getLogger("llm_middleware")


class RowLinear:
    """``F.linear(x, weight, bias)`` through the kernel that suits ``x`` and the weight's device."""

    __slots__ = ("weight", "bias", "block_k", "gemv", "cpu")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight = weight
        self.bias = bias
        self.block_k: int | None = None
        self.gemv: Any = None
        self.cpu: cpu_products.CpuProduct | None = None  # set by use_row_kernel
        if weight.is_cuda:  # Triton is imported only where there is a GPU
            from ..kernels.cuda.row_ops import gemv, gemv_block_k

            self.block_k = gemv_block_k(weight)
            self.gemv = gemv

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self.cpu is not None and x.dtype == weight.dtype:
            return self.cpu(x)
        if (self.block_k is not None and x.numel() == weight.shape[1] and x.stride(-1) == 1
                and x.dtype == weight.dtype and x.device == weight.device):
            return self.gemv(x, weight, self.bias, self.block_k)
        return F.linear(x, weight, self.bias)


def use_row_kernel(model: nn.Module, **cpu_kinds: str | None) -> int:
    """Route the model's linear products through ``RowLinear``; return how many products were routed.

    Plain ``nn.Linear`` modules on CUDA get it as their forward where the weight fits the GEMV
    kernel.  On the CPU, plain modules and the merged products of the fused attention and MLP
    layers run the kernels ``cpu_products.choose`` measures fastest (``cpu_kinds``: its
    ``one_row``/``rows`` overrides); where the default kernel wins both regimes nothing is routed.
    Call after the layers are fused: a module's weight is read once, here.
    """
    modules = list(model.modules())
    fused = [f for m in modules if isinstance(getattr(f := vars(m).get("forward"), "project", None), RowLinear)]
    # The projections a fused layer merged are no longer called: they keep views of its weight.
    merged = {f.project.weight.untyped_storage().data_ptr() for f in fused}
    plain = [m for m in modules if type(m) is nn.Linear and "forward" not in vars(m)
             and m.weight.untyped_storage().data_ptr() not in merged]
    routed = 0
    for module in plain:
        if module.weight.is_cuda:
            forward = RowLinear(module.weight, module.bias)
            if forward.block_k is not None:
                module.forward = forward
                routed += 1
    cpu = [(m, RowLinear(m.weight, m.bias)) for m in plain if m.weight.device.type == "cpu"]
    cpu += [(None, f.project) for f in fused if f.project.weight.device.type == "cpu"]
    if cpu:
        products, one_row, rows = cpu_products.choose([(r.weight, r.bias) for _, r in cpu], **cpu_kinds)
        if (one_row, rows) != ("default", "default"):
            for (module, forward), product in zip(cpu, products):
                forward.cpu = product
                if module is not None:
                    module.forward = forward
                routed += 1
    logger.debug("%d linear products take a faster kernel", routed)
    return routed
