"""Weight memory: each storage once, quantization constants included."""

from __future__ import annotations

import torch
from torch import nn

from llm_middleware.engine.model.footprint import weight_bytes


def test_tied_and_merged_weights_count_once() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False), nn.Linear(4, 6))
    model[1].weight = model[0].weight  # tied input and output embeddings
    model.register_buffer("scale", torch.ones(3, dtype=torch.float64))
    assert weight_bytes(model) == 4 * (10 * 4 + 6 * 4 + 6) + 8 * 3

    merged = torch.randn(12, 4)  # one merged matrix, its parts views of it
    parts = nn.ModuleList([nn.Linear(4, 4, bias=False) for _ in range(3)])
    for i, part in enumerate(parts):
        part.weight = nn.Parameter(merged[4 * i : 4 * (i + 1)])
    assert weight_bytes(parts) == 4 * 12 * 4


def test_quantization_constants_are_counted() -> None:
    class Scales:
        def __init__(self, absmax: torch.Tensor, state2: object | None = None) -> None:
            self.absmax, self.code, self.blocksize, self.state2 = absmax, torch.zeros(16), 64, state2

    layer = nn.Linear(8, 8, bias=False)
    packed = nn.Parameter(torch.zeros(32, dtype=torch.uint8), requires_grad=False)
    packed.quant_state = Scales(torch.zeros(4, dtype=torch.uint8), Scales(torch.zeros(1)))
    layer.weight = packed
    assert weight_bytes(layer) == 32 + (4 + 4 * 16) + (4 + 4 * 16)

    rows = nn.Parameter(torch.zeros(8, 8, dtype=torch.int8), requires_grad=False)
    rows.SCB = torch.zeros(8)
    layer.weight = rows
    assert weight_bytes(layer) == 64 + 4 * 8
