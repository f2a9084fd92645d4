"""Every replacement, in the order that keeps each probe valid: norms, then layers, residuals and products."""

from __future__ import annotations

from torch import nn

from ..attention.paged import AttentionVariant
from .fused_layers import fuse_layers
from .fused_norms import fuse_rms_norms
from .fused_residuals import fuse_residuals
from .row_linear import use_row_kernel


def patch_model(model: nn.Module, variants: dict[int, AttentionVariant]) -> None:
    """Swap in every fused forward that reproduces ``model``'s own; ``variants``: what each layer's attention asks for.

    Fused layers read the fused norms (the rotary kernel applies plain RMS norms itself), and fused
    residuals the fused layers' outputs; row products go last, under whatever merged weights remain.
    """
    fuse_rms_norms(model)
    fuse_layers(model, variants)
    fuse_residuals(model)
    use_row_kernel(model)
