"""The comparison that decides whether a replacement forward reproduced the model's on a probe."""

from __future__ import annotations

import torch


def reproduced(actual: torch.Tensor, expected: torch.Tensor, float32_tolerance: float) -> bool:
    """Same shape and dtype, and equal within ``float32_tolerance`` (relative, and absolute against the
    mean magnitude); 16-bit results within a few roundings, where the replacement rounds once where
    the model rounds after each op."""
    tolerance = float32_tolerance if expected.dtype == torch.float32 else 4 * torch.finfo(expected.dtype).eps
    scale = float(expected.abs().float().mean()) or 1.0
    return actual.shape == expected.shape and actual.dtype == expected.dtype and torch.allclose(
        actual.float(), expected.float(), rtol=tolerance, atol=tolerance * scale
    )
