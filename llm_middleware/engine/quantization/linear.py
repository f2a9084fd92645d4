"""``PackedLinear``: a linear layer whose weight is held packed to 4 or 8 bits, and the swap that makes them.

On CUDA a product reads the packed weight through ``kernels.cuda.quant_products``: ``gemv`` for
one row, ``gemm`` for up to ``GEMM_ROWS`` rows (the decode steps of a batch), and over more rows
(prompt chunks, where the product is bound by arithmetic rather than by reading the weight) the
weight is unpacked to the input's dtype for a cuBLAS product.  On the CPU every product unpacks the
weight first: the packed weights save memory there, not time.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from . import packing
from .packing import PackedWeight

logger = logging.getLogger("llm_middleware")

#: Rows up to which a CUDA product reads the packed weight itself; more rows unpack it first.
GEMM_ROWS = 256


class PackedLinear(nn.Module):
    """``F.linear(x, W, bias)`` where ``W`` is held packed (``packing.quantize``)."""

    def __init__(self, packed: PackedWeight, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features = packed.in_features
        self.out_features = packed.words.shape[0]
        self.bits = packed.bits
        self.dtype = dtype  # the weight's dtype before packing: the layer's inputs and outputs
        self.register_buffer("words", packed.words)
        self.register_buffer("scales", packed.scales)
        self.register_buffer("offsets", packed.offsets)
        self.register_buffer("bias", packed.bias)
        counts = None
        if packed.words.is_cuda:
            from ..kernels.cuda.quant_products import split_counts

            counts = torch.zeros(split_counts(self.out_features), dtype=torch.int32, device=packed.words.device)
        self.register_buffer("counts", counts, persistent=False)  # gemm's split-K tile counters

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, device: torch.device) -> PackedLinear:
        """``linear`` quantized to ``bits`` on ``device`` (its weight is copied there first)."""
        bias = linear.bias.detach().to(device) if linear.bias is not None else None
        return cls(packing.quantize(linear.weight.detach().to(device), bits, bias), linear.weight.dtype)

    @property
    def packed(self) -> PackedWeight:
        return PackedWeight(self.words, self.scales, self.offsets, self.bias, self.bits, self.in_features)

    @property
    def device(self) -> torch.device:
        return self.words.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            from ..kernels.cuda import quant_products

            rows = x.numel() // self.in_features
            if rows == 1 and x.is_contiguous():
                return quant_products.gemv(x, self.packed)
            if rows <= GEMM_ROWS:
                return quant_products.gemm(x, self.packed, self.counts)
            return F.linear(x, quant_products.dequantize(self.packed, x.dtype), self.bias)
        return F.linear(x, packing.dequantize(self.packed, x.dtype), self.bias)

    @classmethod
    def merge(cls, linears: list[PackedLinear]) -> PackedLinear | None:
        """One layer for ``linears`` that read the same input (their outputs side by side), or None
        where they differ in kind; each keeps views of the merged tensors (no extra memory)."""
        first = linears[0]
        kinds = {(lin.bits, lin.in_features, lin.dtype, lin.device, lin.scales.dtype, lin.offsets is None,
                  lin.bias is None) for lin in linears}
        if len(kinds) != 1:
            return None
        offsets = torch.cat([lin.offsets for lin in linears], 1) if first.offsets is not None else None
        bias = torch.cat([lin.bias for lin in linears]) if first.bias is not None else None
        merged = cls(PackedWeight(torch.cat([lin.words for lin in linears]), torch.cat([lin.scales for lin in linears], 1),
                                  offsets, bias, first.bits, first.in_features), first.dtype)
        start = 0
        for lin in linears:
            end = start + lin.out_features
            lin.words, lin.scales = merged.words[start:end], merged.scales[:, start:end]
            if offsets is not None:
                lin.offsets = offsets[:, start:end]
            if bias is not None:
                lin.bias = bias[start:end]
            start = end
        return merged

    def own(self) -> None:
        """Hold copies of its own tensors rather than views of a merged layer's."""
        for name in ("words", "scales", "offsets", "bias"):
            tensor = getattr(self, name)
            if tensor is not None:
                setattr(self, name, tensor.clone())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"


def quantize_linears(model: nn.Module, bits: int, device: torch.device) -> int:
    """Replace every plain ``nn.Linear`` of ``model`` (the output layer too) by a ``PackedLinear``;
    return how many were replaced.

    Each weight is quantized on ``device`` where it sits on the CPU (else where it is), one at a
    time, so that only the packed weights ever take the GPU's memory.  An output layer tied to the
    input embeddings gets a packed copy; the embeddings keep theirs for the lookups.
    """
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is nn.Linear]
    for parent, name, linear in targets:
        where = device if linear.weight.device.type == "cpu" else linear.weight.device
        setattr(parent, name, PackedLinear.from_linear(linear, bits, where))
    logger.debug("%d linear layers packed to %d bits", len(targets), bits)
    return len(targets)
