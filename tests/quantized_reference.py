"""The reference for a model served with ``quantize="4bit"``/``"8bit"``: transformers' own model whose
linear weights are replaced by what their packed form stands for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llm_middleware.engine.quantization import packing


def round_tripped(path: Path, bits: int, device: str) -> Any:
    """``path``'s model in float32 on ``device``, each linear weight quantized to ``bits`` and back
    (a tied output layer unties: the engine packs a copy of it)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    if model.config.tie_word_embeddings:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    with torch.no_grad():
        for module in model.modules():
            if type(module) is torch.nn.Linear:
                packed = packing.quantize(module.weight, bits)
                module.weight.copy_(packing.dequantize(packed, torch.float32))
    return model
