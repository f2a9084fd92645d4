"""The CUDA decode step: static buffers, the paged-attention kernel, and captured graphs.

Replaying a captured graph launches the whole decode forward (hundreds of kernels) with one
call, which is what makes small batches fast on a GPU.  One graph per batch-size bucket; a
step pads its batch up to the next bucket (padding rows write to the scratch slot and their
logits are dropped).  With ``cuda_graphs=False`` the same buffers and kernels run eagerly.
"""

from __future__ import annotations

import bisect
import logging
from typing import Any

import torch

from ..attention.kv_cache import KVCache
from ..attention.paged import AttentionMetadata
from ..sampling.sampler import feed_draws
from ..scheduling.sequence import Sequence

logger = logging.getLogger("llm_middleware")


def batch_buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then multiples of 16 up to ``max_batch_size`` (included)."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch_size]
    sizes += list(range(16, max_batch_size, 16))
    return sorted(set(sizes + [max_batch_size]))


class CudaDecoder:
    """Runs one-token decode steps for up to ``max_batch_size`` sequences on CUDA."""

    def __init__(self, model: Any, kv_cache: KVCache, *, max_batch_size: int, max_model_len: int, pad_id: int,
                 use_graphs: bool, compile_model: bool = False) -> None:
        # torch.compile fuses the many small elementwise kernels of each layer (norms, rotary,
        # activations); the batch dimension is dynamic so one compilation serves every bucket.
        self.model = torch.compile(model, dynamic=True) if compile_model else model
        self.kv_cache = kv_cache
        self.buckets = batch_buckets(max_batch_size)
        self.block_size = kv_cache.block_size
        device = kv_cache.keys[0].device
        rows = self.buckets[-1]
        self.max_blocks = -(-max_model_len // self.block_size)
        self.pad_id = pad_id
        # Every per-step input lives in one flat int64 buffer, staged in pinned host memory and
        # sent with one copy: each copy call lets the event-loop thread take the GIL, and
        # getting it back can cost the step loop milliseconds when the server is busy.  Two
        # host buffers take turns: a step is staged while the previous step's copy may still
        # be queued behind the running one.
        size = 5 * rows + rows * self.max_blocks
        self._staging = [_Staging(self, size, rows), _Staging(self, size, rows)]
        self._turn = 0
        self.device_inputs = torch.zeros(size, dtype=torch.long, device=device)
        # What the captured graphs read: the same fields over the device buffer.
        ids, positions, self.slot_mapping, self.context_lens, self.sources, self.block_tables = (
            self.fields(self.device_inputs, rows)
        )
        self.input_ids, self.positions = ids.view(rows, 1), positions.view(rows, 1)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        if use_graphs:
            try:
                self._capture()
            except RuntimeError as exc:
                # A forward that cannot be captured (a host tensor copied mid-step, as some
                # mixture-of-experts layers do) runs eagerly instead: same code, no graphs.
                self.graphs.clear()
                self.outputs.clear()
                torch.cuda.synchronize()
                logger.warning("decode steps run without CUDA graphs: this model's forward cannot be captured (%s)",
                               exc)

    def fields(self, flat: Any, rows: int) -> tuple[Any, Any, Any, Any, Any, Any]:
        """Token ids, positions, slots, context lengths and source rows ``[rows]`` each, then block
        tables ``[rows, max_blocks]``."""
        return (flat[:rows], flat[rows : 2 * rows], flat[2 * rows : 3 * rows], flat[3 * rows : 4 * rows],
                flat[4 * rows : 5 * rows], flat[5 * rows :].reshape(rows, self.max_blocks))

    def _forward(self, rows: int) -> torch.Tensor:
        meta = AttentionMetadata(
            kv_cache=self.kv_cache, slot_mapping=self.slot_mapping[:rows], gather_blocks=None, mask=None,
            causal_only=False, block_tables=self.block_tables[:rows], context_lens=self.context_lens[:rows],
        )
        out = self.model(
            input_ids=self.input_ids[:rows], position_ids=self.positions[:rows], use_cache=False,
            logits_to_keep=1, llm_attention=meta,
        )
        return out.logits[:, -1, :]

    @torch.inference_mode()
    def _capture(self) -> None:
        pool = None
        for rows in reversed(self.buckets):  # largest first, so smaller graphs reuse its memory pool
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._forward(rows)  # warm-up: compiles the kernel, settles the allocator
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[rows] = self._forward(rows)
            pool = graph.pool()
            self.graphs[rows] = graph
        torch.cuda.synchronize()
        logger.info("captured CUDA graphs of the decode step for batch sizes %s", self.buckets)

    @torch.inference_mode()
    def run(self, seqs: list[Sequence], previous: torch.Tensor | None = None, sources: list[int] | None = None) -> torch.Tensor:
        """Logits ``[len(seqs), vocab]`` of each sequence's next token (its last token is computed now).

        A row whose last token is still on the device takes it from ``previous[sources[row]]``
        (``sources[row]`` is -1 for the rows whose last token the host knows).
        """
        n = len(seqs)
        rows = self.buckets[bisect.bisect_left(self.buckets, n)]
        staging = self._staging[self._turn]
        self._turn ^= 1
        staging.stage(seqs, rows, sources)
        self.device_inputs.copy_(staging.host, non_blocking=True)
        if previous is not None:
            feed_draws(self.input_ids[:n, 0], self.sources[:n], previous)
        if rows in self.graphs:
            self.graphs[rows].replay()
            return self.outputs[rows][:n]
        return self._forward(rows)[:n]


class _Staging:
    """One pinned host copy of a decode step's inputs, in the decoder's flat layout."""

    def __init__(self, decoder: CudaDecoder, size: int, rows: int) -> None:
        self.host = torch.zeros(size, dtype=torch.long, pin_memory=True)
        self.block_size = decoder.block_size
        self.pad_id = decoder.pad_id
        self.scratch_slot = decoder.kv_cache.scratch_slot
        # numpy views: cheap writes from lists
        self.ids, self.positions, self.slots, self.context_lens, self.sources, self.tables = (
            decoder.fields(self.host.numpy(), rows)
        )
        self._pad(0, rows)
        self._staged: list[tuple[list[int], int] | None] = [None] * rows  # each row's block list and length, as staged

    def _pad(self, start: int, end: int) -> None:
        """Inputs of padding rows ``start:end``: one token that writes to the scratch slot."""
        self.ids[start:end] = self.pad_id
        self.positions[start:end] = 0
        self.slots[start:end] = self.scratch_slot
        self.context_lens[start:end] = 1
        self.sources[start:end] = -1

    def stage(self, seqs: list[Sequence], rows: int, sources: list[int] | None) -> None:
        n = len(seqs)
        bs = self.block_size
        positions = [s.num_computed for s in seqs]
        self.ids[:n] = [s.token_ids[-1] for s in seqs]
        self.positions[:n] = positions
        self.slots[:n] = [s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, positions)]
        self.context_lens[:n] = [p + 1 for p in positions]
        self.sources[:n] = sources if sources is not None else -1
        # Entries past a row's own blocks are never read (its context length bounds the walk), and
        # a row that holds the same block list, no longer than when this buffer last staged it, is
        # already right (block lists only grow; a freed or preempted sequence gets a new list).
        staged = self._staged
        for i, s in enumerate(seqs):
            table = s.block_table
            entry = staged[i]
            if entry is None or entry[0] is not table or entry[1] != len(table):
                staged[i] = (table, len(table))
                self.tables[i, : len(table)] = table
        self._pad(n, rows)
