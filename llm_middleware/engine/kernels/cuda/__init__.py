"""Triton kernels (CUDA only): paged decode attention, rotary embedding with cache write, row ops."""
