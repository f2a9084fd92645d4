"""Compute kernels below the engine: Triton kernels for CUDA, numba kernels for the CPU."""
