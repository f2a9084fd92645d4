"""KV-cache block allocation: which fixed-size blocks of the cache each sequence holds, and the prefix cache.

With prefix caching, a full block whose contents are computed is entered in the cache under its
hash (``prefix_hash``) and outlives its sequence: a later sequence whose tokens begin the same way
takes the cached blocks instead of computing them.  Blocks are reference-counted; one that no
sequence holds is free, and one that still holds a cached prefix stays findable until a block is
needed and no other is free, when the least recently released goes first.  A sequence only ever
writes to the blocks past its cached ones (its first uncomputed token is always past them), so a
shared block is read-only.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque

from .prefix_hash import block_hash
from .sequence import PENDING_TOKEN, Sequence


class BlockManager:
    """Hands out blocks of ``block_size`` token slots; with ``caching``, keeps computed full blocks for reuse.

    Check/act pairs (``can_allocate``/``allocate``, ``cached_prefix``/``share``) keep the scheduler's
    decisions readable: it asks first, then commits, and nothing here makes policy.
    """

    def __init__(self, num_blocks: int, block_size: int, *, caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.caching = caching
        self._refs = [0] * num_blocks
        self._hash_of: list[bytes | None] = [None] * num_blocks
        self._cached: dict[bytes, int] = {}  # block hash -> the block holding those contents
        self._free: deque[int] = deque(range(num_blocks))  # free and holding nothing cached
        self._evictable: OrderedDict[int, None] = OrderedDict()  # free, cached; least recently released first
        # Hashes of prompt blocks a running sequence holds but has not computed yet: a sequence that
        # would need the same block waits a step and takes it from the cache instead of computing it too.
        self._filling: Counter[bytes] = Counter()
        #: Prompt tokens of sequences started so far: served from the cache, and computed.
        self.cached_prompt_tokens = 0
        self.computed_prompt_tokens = 0

    @property
    def num_free(self) -> int:
        """Blocks no sequence holds, cached ones included (they are taken back when needed)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_cached(self) -> int:
        """Blocks holding a cached prefix, held by sequences or free."""
        return len(self._cached)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks ``seq`` lacks to hold ``num_new_tokens`` more computed tokens."""
        total = seq.num_computed + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= self.num_free

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        table = seq.block_table
        first = len(table)
        for _ in range(self.blocks_needed(seq, num_new_tokens)):
            table.append(self._take())
        if first < len(table):  # most decode steps take no block
            # The prompt blocks among them, whose hashes are known before they are computed.
            self._filling.update(seq.block_hashes[first : len(table)])

    def cached_prefix(self, seq: Sequence) -> list[int]:
        """The cached blocks that begin a sequence holding no blocks, up to the block of its last token,
        which is always computed (its logits draw the next token)."""
        if not self.caching or seq.block_table:
            return []
        found = []
        for h in seq.block_hashes[: (seq.num_tokens - 1) // self.block_size]:
            block = self._cached.get(h)
            if block is None:
                break
            found.append(block)
        return found

    def awaits_block(self, seq: Sequence, cached: list[int]) -> bool:
        """Whether the block after ``cached`` (``seq``'s cached prefix) is being computed by a running
        sequence, so that ``seq`` would find it cached a step later."""
        index = len(cached)
        limit = (seq.num_tokens - 1) // self.block_size
        return index < limit and index < len(seq.block_hashes) and self._filling[seq.block_hashes[index]] > 0

    def num_reclaimed(self, cached: list[int]) -> int:
        """How many of the free blocks taking ``cached`` uses up."""
        return sum(1 for block in cached if self._refs[block] == 0)

    def share(self, seq: Sequence, cached: list[int]) -> None:
        """Start ``seq`` (holding no blocks) from its cached prefix ``cached``; count its prompt tokens
        the first time it starts."""
        for block in cached:
            if self._refs[block] == 0:
                del self._evictable[block]
            self._refs[block] += 1
        seq.block_table = list(cached)
        seq.num_committed_blocks = len(cached)
        seq.num_computed = len(cached) * self.block_size
        if seq.num_cached_tokens is None:
            seq.num_cached_tokens = seq.num_computed
            self.cached_prompt_tokens += seq.num_computed
            self.computed_prompt_tokens += seq.num_prompt_tokens - seq.num_computed

    def commit(self, seq: Sequence) -> None:
        """Enter in the cache the full blocks ``seq`` has computed whose tokens the host knows.

        Called once each step is launched (its writes are queued on the device before any later
        step's reads); a block whose last token is a draw not read yet waits for a later call.
        """
        if not self.caching:
            return
        size = self.block_size
        hashes = seq.block_hashes
        index = seq.num_committed_blocks
        full = min(seq.num_computed, seq.num_tokens) // size
        while index < full:
            if index == len(hashes):  # a block of the output: hashed once its tokens are known
                tokens = seq.token_ids[index * size : (index + 1) * size]
                if PENDING_TOKEN in tokens:
                    break
                hashes.append(block_hash(hashes[-1] if index else seq.request.prefix_root, tokens))
            else:
                self._unfill(hashes[index : index + 1])
            block = seq.block_table[index]
            # Contents computed twice (by sequences started together) stay cached once; the copy is private.
            if hashes[index] not in self._cached:
                self._cached[hashes[index]] = block
                self._hash_of[block] = hashes[index]
            index += 1
        seq.num_committed_blocks = index

    def free(self, seq: Sequence) -> None:
        """Release ``seq``'s blocks, keeping the cached ones findable (its computed blocks are committed first)."""
        self.commit(seq)
        table = seq.block_table
        self._unfill(seq.block_hashes[seq.num_committed_blocks : len(table)])
        # Last blocks first: the least recently released are evicted first, and a prefix's first
        # blocks, which more sequences share, should outlive its last ones.
        for block in reversed(table):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if self._hash_of[block] is not None:
                    self._evictable[block] = None
                else:
                    self._free.append(block)
        seq.block_table = []
        seq.num_committed_blocks = 0

    def _unfill(self, hashes: list[bytes]) -> None:
        """These prompt blocks are no longer being computed (they are, or their sequence let them go)."""
        for h in hashes:
            left = self._filling[h] - 1
            if left:
                self._filling[h] = left
            else:
                del self._filling[h]

    def _take(self) -> int:
        """A free block for new contents: one holding nothing cached, else the least recently released."""
        if self._free:
            block = self._free.popleft()
        else:
            block, _ = self._evictable.popitem(last=False)
            del self._cached[self._hash_of[block]]  # type: ignore[index]
            self._hash_of[block] = None
        self._refs[block] = 1
        return block
