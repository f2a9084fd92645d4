"""Per-request sampling parameters, the batched sampler and grammar-constrained decoding."""
