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
        max_blocks = -(-max_model_len // self.block_size)
        self.input_ids = torch.full((rows, 1), pad_id, dtype=torch.long, device=device)
        self.positions = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.slot_mapping = torch.full((rows,), kv_cache.scratch_slot, dtype=torch.long, device=device)
        self.block_tables = torch.zeros((rows, max_blocks), dtype=torch.int32, device=device)
        self.context_lens = torch.ones((rows,), dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        if use_graphs:
            self._capture()

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
        positions = [s.num_computed for s in seqs]
        width = max(len(s.block_table) for s in seqs)
        table = torch.tensor([s.block_table + [0] * (width - len(s.block_table)) for s in seqs], dtype=torch.int32)
        slots = [s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, positions)]
        pad = rows - n
        scratch = self.kv_cache.scratch_slot
        self.input_ids[:rows, 0].copy_(torch.tensor([s.token_ids[-1] for s in seqs] + [0] * pad), non_blocking=True)
        self.positions[:rows, 0].copy_(torch.tensor(positions + [0] * pad), non_blocking=True)
        self.slot_mapping[:rows].copy_(torch.tensor(slots + [scratch] * pad), non_blocking=True)
        self.context_lens[:rows].copy_(torch.tensor([p + 1 for p in positions] + [1] * pad, dtype=torch.int32),
                                       non_blocking=True)
        self.block_tables[:n, :width].copy_(table, non_blocking=True)
        if rows in self.graphs:
            self.graphs[rows].replay()
            return self.outputs[rows][:n]
        return self._forward(rows)[:n]
