"""How tokens are drawn: the batched sampler over a step's sequences, and grammar-constrained decoding."""
