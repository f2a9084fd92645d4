"""Linear products that run one-row inputs through the GEMV kernel on CUDA.

A batch-1 decode step is a chain of one-row products; on CUDA ``RowLinear`` sends those to
``row_kernels.gemv`` and everything else (prompt chunks, batches) to ``F.linear``.  Plain
``nn.Linear`` modules get a ``RowLinear`` as their forward; quantized layers (subclasses)
keep their own kernels.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("llm_middleware")


class RowLinear:
    """``F.linear(x, weight, bias)``; a one-row ``x`` on CUDA takes the GEMV kernel where the weight fits it."""

    __slots__ = ("weight", "bias", "block_k", "gemv")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight = weight
        self.bias = bias
        self.block_k: int | None = None
        self.gemv: Any = None
        if weight.is_cuda:  # Triton is imported only where there is a GPU
            from .row_kernels import gemv, gemv_block_k

            self.block_k = gemv_block_k(weight)
            self.gemv = gemv

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (self.block_k is not None and x.numel() == weight.shape[1] and x.stride(-1) == 1
                and x.dtype == weight.dtype and x.device == weight.device):
            return self.gemv(x, weight, self.bias, self.block_k)
        return F.linear(x, weight, self.bias)


def use_row_kernel(model: nn.Module) -> int:
    """Give every plain CUDA ``nn.Linear`` whose weight fits the kernel a ``RowLinear`` forward; return how many.

    Call after the layers are fused: a module's weight is read once, here.
    """
    swapped = 0
    for module in model.modules():
        if type(module) is not nn.Linear or "forward" in vars(module) or not module.weight.is_cuda:
            continue
        forward = RowLinear(module.weight, module.bias)
        if forward.block_k is not None:
            module.forward = forward
            swapped += 1
    logger.debug("%d linear layers take the one-row kernel", swapped)
    return swapped
