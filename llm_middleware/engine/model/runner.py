"""Runs the model on one group of rows: builds the step's tensors and returns next-token logits."""

from __future__ import annotations

import torch

from ..attention.kv_cache import KVCache
from ..attention.paged import AttentionMetadata
from ..kernels.cpu import paged_decode as cpu_attention
from ..kernels.cpu import row_ops as cpu_ops
from ..sampling.sampler import feed_draws
from ..scheduling.scheduler import ScheduledBatch
from ..scheduling.sequence import Sequence
from .cpu_decoder import CpuDecoder, choose_rows
from .cuda_decoder import CudaDecoder


class ModelRunner:
    """Turns ``(sequence, num_tokens)`` rows into one left-padded forward pass; makes no policy decisions.

    Left padding puts every row's last token in the last column, so the model's own
    ``logits_to_keep=1`` yields exactly the logits to sample from.
    """

    def __init__(self, model: torch.nn.Module, kv_cache: KVCache, pad_id: int, decoder: CudaDecoder | None = None) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.pad_id = pad_id
        self.device = model.get_input_embeddings().weight.device  # where the inputs go
        self.block_size = kv_cache.block_size
        self.decoder = decoder
        # Decode rows on the CPU attend through the numba kernels, which read the cache in place.
        self.cpu_kernels = (all(t.device.type == "cpu" for t in kv_cache.keys)
                            and cpu_ops.available(kv_cache.keys[0].dtype) and cpu_attention.reproduces())
        #: Runs CPU decode steps of up to ``cpu_decoder.max_rows`` rows as one call (``use_cpu_decoder``).
        self.cpu_decoder: CpuDecoder | None = None

    def step(self, batch: ScheduledBatch, previous: torch.Tensor | None = None,
             previous_rows: dict[int, int] | None = None) -> tuple[torch.Tensor | None, list[Sequence]]:
        """Queue ``batch``'s forward; return the logits of the rows that draw a token now (decode rows, then
        prompts whose last chunk this is) and those rows' sequences (logits None when none draws).

        A decode row whose last token is still a draw of the previous step takes it on the device from
        ``previous`` (that step's drawn tokens; ``previous_rows``: each sequence's row in them, by ``seq_id``).
        """
        logits: list[torch.Tensor] = []
        drawing: list[Sequence] = []
        if batch.decode:
            if previous is None or previous_rows is None:
                logits.append(self.decode(batch.decode))
            else:
                sources = [previous_rows.get(s.seq_id, -1) for s in batch.decode]
                logits.append(self.decode(batch.decode, previous, sources))
            drawing.extend(batch.decode)
        if batch.prefill:
            out = self.run(batch.prefill)
            finishing = [i for i, (seq, n) in enumerate(batch.prefill) if n == seq.num_uncomputed]
            if len(finishing) == len(batch.prefill):
                logits.append(out)
            elif finishing:
                # a list index would be copied to the device synchronously: a wait for the whole chunk
                logits.append(out.index_select(0, torch.tensor(finishing).to(out.device, non_blocking=True)))
            drawing.extend(batch.prefill[i][0] for i in finishing)
        if not logits:
            return None, drawing
        return (logits[0] if len(logits) == 1 else torch.cat(logits)), drawing

    def decode(self, seqs: list[Sequence], previous: torch.Tensor | None = None,
               sources: list[int] | None = None) -> torch.Tensor:
        """Logits ``[len(seqs), vocab]`` after computing each sequence's one new token.

        A sequence whose last token the host has not read yet takes it from the previous
        step's draws: ``previous[sources[i]]`` (``sources[i]`` is -1 for the others).
        """
        if self.decoder is not None:
            return self.decoder.run(seqs, previous, sources)
        if self.cpu_decoder is not None and len(seqs) <= self.cpu_decoder.max_rows:
            return self.cpu_decoder.run(seqs, previous, sources)
        return self.run([(seq, 1) for seq in seqs], previous, sources)

    def use_cpu_decoder(self, max_rows: int) -> int:
        """Run CPU decode steps of up to ``max_rows`` rows as one numba call where that reproduces the
        model's step and measured faster here; return the largest batch it serves (0: none)."""
        if not self.cpu_kernels:
            return 0
        decoder = CpuDecoder.build(self.model, self.kv_cache)
        if decoder is None or not choose_rows(decoder, self, max_rows):
            return 0
        self.cpu_decoder = decoder
        return decoder.max_rows

    # Inputs are sent with non_blocking copies: from pageable memory they are staged at once, and a
    # blocking copy would first wait for everything queued on the device (the decode step of this
    # same batch, say) while the device could be computing.
    @torch.inference_mode()
    def run(self, rows: list[tuple[Sequence, int]], previous: torch.Tensor | None = None,
            sources: list[int] | None = None) -> torch.Tensor:
        """Compute ``num_tokens`` new tokens of each row; return logits ``[len(rows), vocab]``.

        ``previous``/``sources``: as for ``decode``; only a row's last token may be pending.
        """
        width = max(n for _, n in rows)
        starts = [seq.num_computed for seq, _ in rows]
        input_ids = []
        for (seq, n), start in zip(rows, starts):
            input_ids.append([self.pad_id] * (width - n) + seq.token_ids[start : start + n])
        dev = self.device
        ids = torch.tensor(input_ids, dtype=torch.long)  # [B, S]
        start_t = torch.tensor(starts, dtype=torch.long)[:, None]  # [B, 1]
        count_t = torch.tensor([n for _, n in rows], dtype=torch.long)[:, None]
        col = torch.arange(width)[None, :]
        pad = width - count_t  # [B, 1]
        positions = start_t + (col - pad).clamp_min(0)  # [B, S]; padding repeats the first position
        blocks = max(len(seq.block_table) for seq, _ in rows)
        table = torch.tensor([seq.block_table + [0] * (blocks - len(seq.block_table)) for seq, _ in rows])
        bs = self.block_size
        new_slots = table.gather(1, positions // bs) * bs + positions % bs
        new_slots = torch.where(col >= pad, new_slots, self.kv_cache.scratch_slot)  # [B, S]

        # Fresh prompts of one length need no cache reads and no mask: plain causal attention.
        causal_only = all(start == 0 for start in starts) and all(n == width for _, n in rows)
        gather_blocks = mask = block_tables = context_lens = None
        positions_dev = positions.to(dev, non_blocking=True)
        if width == 1 and not causal_only and self.cpu_kernels:
            block_tables, context_lens = table, start_t[:, 0] + 1
        elif not causal_only:
            # Whole blocks are gathered (contiguous copies); keys past each row's context, and
            # the padding blocks of shorter rows, are masked out by position.
            key_pos = torch.arange(blocks * bs)[None, :]  # [1, L]
            gather_blocks = table.to(dev, non_blocking=True)
            mask = (key_pos[:, None, :] <= positions[:, :, None])[:, None].to(dev, non_blocking=True)  # [B, 1, S, L]
        meta = AttentionMetadata(
            kv_cache=self.kv_cache,
            slot_mapping=new_slots.reshape(-1).to(dev, non_blocking=True),
            gather_blocks=gather_blocks,
            mask=mask,
            causal_only=causal_only,
            block_tables=block_tables,
            context_lens=context_lens,
            positions=positions_dev,
        )
        ids = ids.to(dev, non_blocking=True)
        if previous is not None and sources is not None:
            feed_draws(ids[:, -1], torch.tensor(sources).to(dev, non_blocking=True), previous)
        out = self.model(
            input_ids=ids,
            position_ids=positions_dev,
            use_cache=False,
            logits_to_keep=1,
            llm_attention=meta,
        )
        return out.logits[:, -1, :]
