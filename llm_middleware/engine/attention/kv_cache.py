"""The paged KV cache: per layer, one key and one value tensor of token slots."""

from __future__ import annotations

import torch


class KVCache:
    """Slots ``[num_blocks * block_size + 1, kv_heads, head_dim]`` per layer, for keys and values.

    ``devices[i]`` is where layer ``i``'s tensors live.

    A token's slot is ``block * block_size + offset``.  The extra last slot is scratch space:
    padding positions of a batch write there, so no masked write is ever needed.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        devices: list[torch.device],
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_slots = num_blocks * block_size
        self.scratch_slot = self.num_slots
        shape = (self.num_slots + 1, num_kv_heads, head_dim)
        # Each layer's cache lives on that layer's device (models spread over several GPUs).
        self.keys = [torch.zeros(shape, dtype=dtype, device=devices[i]) for i in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=devices[i]) for i in range(num_layers)]

    @property
    def nbytes(self) -> int:
        """Bytes of all layers' key and value tensors."""
        return sum(t.nbytes for t in (*self.keys, *self.values))

    @staticmethod
    def bytes_per_token(*, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def blocks(self, layer_cache: torch.Tensor) -> torch.Tensor:
        """A layer's slots viewed as ``[num_blocks, block_size, kv_heads, head_dim]`` (scratch slot left out)."""
        return layer_cache[: self.num_slots].view(self.num_blocks, self.block_size, *layer_cache.shape[1:])
