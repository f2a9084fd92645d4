"""KV-cache block allocation: which fixed-size blocks of the cache each sequence owns."""

from __future__ import annotations

from collections import deque

from .sequence import Sequence


class BlockManager:
    """Hands out blocks of ``block_size`` token slots from a free list.

    Check/act pairs (``can_allocate``/``allocate``) keep the scheduler's decisions readable:
    it asks first, then commits, and nothing here makes policy.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks ``seq`` lacks to hold ``num_new_tokens`` more computed tokens."""
        total = seq.num_computed + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= len(self._free)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        for _ in range(self.blocks_needed(seq, num_new_tokens)):
            seq.block_table.append(self._free.popleft())

    def free(self, seq: Sequence) -> None:
        self._free.extend(seq.block_table)
        seq.block_table = []
