"""Probe-checked replacements of a model's modules: fused layers, norms, residuals, row products."""
