"""What a loaded model's weights occupy in memory, for the metrics and the benchmark."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch


def _quantization_constants(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """The tensors bitsandbytes keeps beside a quantized weight: a 4-bit weight's block scales and
    code (nested, with double quantization), an 8-bit weight's row scales."""
    state = getattr(tensor, "quant_state", None)
    while state is not None:
        yield from (value for value in vars(state).values() if isinstance(value, torch.Tensor))
        state = getattr(state, "state2", None)
    scales = getattr(tensor, "SCB", None)
    if isinstance(scales, torch.Tensor):
        yield scales


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers as loaded: quantized weights in their packed form
    with their constants, each storage counted once (tied embeddings, views into merged weights)."""
    storages: dict[tuple[torch.device, int], int] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        for held in (tensor, *_quantization_constants(tensor)):
            storage = held.untyped_storage()
            storages[(held.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())
