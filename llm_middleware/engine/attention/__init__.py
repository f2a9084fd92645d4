"""Attention over the paged KV cache: the cache itself and the function transformers' layers call."""
