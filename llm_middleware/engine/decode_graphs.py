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

from .attention import AttentionMetadata
from .kv_cache import KVCache
from .sequence import Sequence

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
        # getting it back can cost the step loop milliseconds when the server is busy.
        size = 4 * rows + rows * self.max_blocks
        self.host_inputs = torch.zeros(size, dtype=torch.long, pin_memory=True)
        self._host = self.host_inputs.numpy()
        self.device_inputs = torch.zeros(size, dtype=torch.long, device=device)
        flat = self.device_inputs
        self.input_ids = flat[:rows].view(rows, 1)
        self.positions = flat[rows : 2 * rows].view(rows, 1)
        self.slot_mapping = flat[2 * rows : 3 * rows]
        self.context_lens = flat[3 * rows : 4 * rows]
        self.block_tables = flat[4 * rows :].view(rows, self.max_blocks)
        self._stage_padding(0, rows)
        self._staged_tables: list[list[int] | None] = [None] * rows  # each row's block list, as staged
        self._staged_lens = [0] * rows
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        if use_graphs:
            self._capture()

    def _stage_padding(self, start: int, end: int) -> None:
        """Host-side inputs of padding rows ``start:end``: one token that writes to the scratch slot."""
        total = self.buckets[-1]
        host = self._host
        host[start:end] = self.pad_id
        host[total + start : total + end] = 0
        host[2 * total + start : 2 * total + end] = self.kv_cache.scratch_slot
        host[3 * total + start : 3 * total + end] = 1

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
    def run(self, seqs: list[Sequence]) -> torch.Tensor:
        """Logits ``[len(seqs), vocab]`` of each sequence's next token (its last token is computed now)."""
        n = len(seqs)
        rows = self.buckets[bisect.bisect_left(self.buckets, n)]
        bs = self.block_size
        host = self._host
        total = self.buckets[-1]
        positions = [s.num_computed for s in seqs]
        host[:n] = [s.token_ids[-1] for s in seqs]
        host[total : total + n] = positions
        host[2 * total : 2 * total + n] = [s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, positions)]
        host[3 * total : 3 * total + n] = [p + 1 for p in positions]
        # Entries past a row's own blocks are never read (its context length bounds the walk), and
        # a row that holds the same block list, no longer than last step, is already right (block
        # lists only grow; a freed or preempted sequence gets a new list).
        width = self.max_blocks
        staged = self._staged_tables
        for i, s in enumerate(seqs):
            table = s.block_table
            if staged[i] is not table or self._staged_lens[i] != len(table):
                staged[i], self._staged_lens[i] = table, len(table)
                start = 4 * total + i * width
                host[start : start + len(table)] = table
        self._stage_padding(n, rows)
        self.device_inputs.copy_(self.host_inputs, non_blocking=True)
        if rows in self.graphs:
            self.graphs[rows].replay()
            return self.outputs[rows][:n]
        return self._forward(rows)[:n]
