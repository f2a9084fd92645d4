"""CPU kernels: numba row ops, paged decode attention and the one-call decode step; timed linear products."""
