"""Numba kernels for CPU steps: row ops, paged decode attention, the one-call decode step, products."""
