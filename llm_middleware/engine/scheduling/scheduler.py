"""Which sequences run in the next step: decodes first, then prefill chunks within a token budget."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """One step's work.  ``prefill`` pairs a sequence with how many of its tokens to compute."""

    decode: list[Sequence] = field(default_factory=list)
    prefill: list[tuple[Sequence, int]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.decode or self.prefill)

    def discard_finished(self) -> None:
        """Drop the sequences that finished (or were cancelled) after this batch was scheduled."""
        self.decode = [s for s in self.decode if s.status is not SequenceStatus.FINISHED]
        self.prefill = [(s, n) for s, n in self.prefill if s.status is not SequenceStatus.FINISHED]


class Scheduler:
    """Continuous batching policy; never touches tensors.

    Running sequences decode every step (so streams never stall behind a long prompt); the
    remaining per-step token budget prefills waiting prompts in chunks, each from the end of its
    longest cached prefix.  When the KV cache runs out, the most recently admitted sequence is
    preempted and later recomputed (from whatever of it the cache still holds).
    """

    def __init__(self, block_manager: BlockManager, *, max_batch_size: int, max_prefill_tokens: int) -> None:
        self.blocks = block_manager
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take ``seq`` out (finished or cancelled) and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED

    def schedule(self, admit: bool = True) -> ScheduledBatch:
        """The next step's work; ``admit=False`` starts no waiting sequence (running ones go on)."""
        batch = ScheduledBatch()
        # A sequence whose last draw (still on the device) reaches its length limit is done.
        decoding = [s for s in self.running if s.num_uncomputed == 1 and s.num_tokens < s.max_total_tokens]
        for seq in decoding:
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            while not self.blocks.can_allocate(seq, 1):
                victim = self.running[-1]
                self._preempt(victim)
                batch.preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                self.blocks.allocate(seq, 1)
                batch.decode.append(seq)

        budget = self.max_prefill_tokens
        # Sequences already part-way through their prompt continue first, then new ones.
        for seq in [s for s in self.running if s.num_uncomputed > 1]:
            if budget <= 0:
                break
            chunk = self._fit(seq, min(seq.num_uncomputed, budget))
            if chunk:
                self.blocks.allocate(seq, chunk)
                batch.prefill.append((seq, chunk))
                budget -= chunk
        while admit and self.waiting and budget > 0 and len(self.running) < self.max_batch_size:
            seq = self.waiting[0]
            # A new sequence starts from the longest prefix of it the cache holds and computes the rest.
            cached = self.blocks.cached_prefix(seq)
            if self.blocks.awaits_block(seq, cached):
                break  # the next block of its prefix is being computed (by a sibling choice, say): wait for it
            uncomputed = seq.num_uncomputed - len(cached) * self.blocks.block_size
            chunk = self._fit(seq, min(uncomputed, budget), self.blocks.num_reclaimed(cached))
            if not chunk:
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            self.blocks.share(seq, cached)
            self.blocks.allocate(seq, chunk)
            batch.prefill.append((seq, chunk))
            budget -= chunk
        return batch

    def launched(self, batch: ScheduledBatch) -> None:
        """``batch``'s step is queued on the device: its tokens count as computed, and the blocks they
        fill join the prefix cache."""
        for seq in batch.decode:
            seq.num_computed += 1
            self.blocks.commit(seq)
        for seq, n in batch.prefill:
            seq.num_computed += n
            self.blocks.commit(seq)

    def _fit(self, seq: Sequence, chunk: int, reclaimed: int = 0) -> int:
        """The largest part of ``chunk`` whose KV slots are free now, once ``reclaimed`` free blocks
        (cached ones ``seq`` takes) are taken."""
        free_slots = (self.blocks.num_free - reclaimed) * self.blocks.block_size
        partial = len(seq.block_table) * self.blocks.block_size - seq.num_computed
        return max(0, min(chunk, free_slots + partial))

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
