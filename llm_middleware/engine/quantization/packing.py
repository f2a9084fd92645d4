"""Weights quantized and packed in PyTorch: 4-bit groupwise with offsets, 8-bit per row.

* 4-bit: each row's values in groups of ``CHUNK`` (128) along K, each group with its own scale and
  offset (asymmetric: the group's smallest and largest values map to codes 0 and 15).
* 8-bit: one scale per row, symmetric (codes -127..127 around zero), no offset.

The layout is the one ``kernels.cuda.quant_products`` reads (its docstring has the details); a code
``u`` stands for ``(u - 2 ** (bits - 1)) * scale + offset``.  Scales and offsets are stored rounded
first, and the codes chosen against the rounded values, so that what the kernels compute is the
quantization's own best.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

#: Values of a row that share a scale and offset (4-bit); also the K step of every kernel's loop.
CHUNK = 128


class PackedWeight(NamedTuple):
    """A packed weight's tensors and facts, as the kernels read them."""

    words: torch.Tensor  # [N, Kp / per_word] int32, rows may be a view's (stride(0) >= its width)
    scales: torch.Tensor  # [Kp / CHUNK, N] or [1, N]; columns may be a view's
    offsets: torch.Tensor | None  # like scales where grouped; None per row
    bias: torch.Tensor | None
    bits: int
    in_features: int  # K before padding


#: Bits of each ``quantize`` option the engine packs itself.
BITS = {"4bit": 4, "8bit": 8}


def _padded(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as float32, K padded to a multiple of ``CHUNK`` by repeating each row's last value
    (which leaves every group's range as it was; the kernels read no x past K)."""
    w = weight.detach().float()
    pad = -w.shape[1] % CHUNK
    return torch.cat([w, w[:, -1:].expand(-1, pad)], 1) if pad else w


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes ``[N, Kp]`` (0 .. 2**bits - 1) as int32 words ``[N, Kp * bits / 32]``, low bits first."""
    per_word = 32 // bits
    shifts = torch.arange(0, 32, bits, device=codes.device, dtype=torch.int64)
    words = (codes.to(torch.int64).view(codes.shape[0], -1, per_word) << shifts).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # the same 32 bits, signed


def unpack(words: torch.Tensor, bits: int) -> torch.Tensor:
    """The codes ``[N, Kp]`` (int32) of ``pack``'s words."""
    shifts = torch.arange(0, 32, bits, device=words.device, dtype=torch.int32)
    return ((words.unsqueeze(-1) >> shifts) & (2**bits - 1)).reshape(words.shape[0], -1)


def quantize(weight: torch.Tensor, bits: int, bias: torch.Tensor | None = None) -> PackedWeight:
    """``weight [N, K]`` quantized to ``bits`` (4: groupwise, 8: per row), on the weight's device.

    Scales and offsets are bfloat16 for a 16-bit weight and float32 for a float32 one (an 8-bit
    weight's scales, one per row, are always float32).
    """
    n, k = weight.shape
    w = _padded(weight)
    if bits == 4:
        groups = w.view(n, -1, CHUNK)
        low, high = groups.amin(-1), groups.amax(-1)  # [N, G]
        step = (high - low) / 15
        flat = step == 0
        dtype = torch.float32 if weight.dtype == torch.float32 else torch.bfloat16
        # Code 8 stands for the offset; a group of one value is that value with code 8.
        scales = torch.where(flat, 1.0, step).to(dtype)
        offsets = torch.where(flat, low, low + 8 * step).to(dtype)
        codes = ((groups - offsets.float()[..., None]) / scales.float()[..., None]).round() + 8
        codes = codes.clamp(0, 15).view(n, -1)
        scales, offsets = scales.t().contiguous(), offsets.t().contiguous()  # [G, N]
        return PackedWeight(pack(codes, 4), scales, offsets, bias, 4, k)
    if bits == 8:
        scale = w.abs().amax(1) / 127
        scales = torch.where(scale == 0, 1.0, scale)
        codes = ((w / scales[:, None]).round() + 128).clamp(1, 255)
        return PackedWeight(pack(codes, 8), scales[None, :].contiguous(), None, bias, 8, k)
    raise ValueError(f"bits must be 4 or 8, got {bits}")


def dequantize(w: PackedWeight, dtype: torch.dtype) -> torch.Tensor:
    """The weight ``[N, K]`` a packed one stands for, computed in float64 for float64 and in float32
    otherwise, then given ``dtype``."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    values = unpack(w.words, w.bits).to(compute) - 2 ** (w.bits - 1)  # [N, Kp]
    n = values.shape[0]
    if w.offsets is None:
        full = values * w.scales.to(compute).t()
    else:
        groups = values.view(n, -1, CHUNK)
        full = (groups * w.scales.to(compute).t()[..., None] + w.offsets.to(compute).t()[..., None]).view(n, -1)
    return full[:, : w.in_features].to(dtype)
