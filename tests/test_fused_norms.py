"""The fused RMSNorm swap: every reproducible norm is swapped, outputs stay the same, others are left alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from llm_middleware.engine.patching.fused_norms import fuse_rms_norms


@pytest.mark.parametrize("arch_fixture", ["tiny_model_dir", "tiny_llama_dir"])
def test_swaps_every_norm_and_keeps_the_logits(arch_fixture: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(arch_fixture)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    for module in model.modules():  # loaded norms are all ones: give them a shape worth checking
        if type(module).__name__.endswith("RMSNorm"):
            torch.nn.init.normal_(module.weight, mean=1.0, std=0.3)
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    with torch.inference_mode():
        before = model(ids).logits
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    # Qwen3 has per-head q/k norms besides the two per layer and the final one.
    layers = model.config.num_hidden_layers
    assert len(norms) == (4 * layers + 1 if model.config.model_type == "qwen3" else 2 * layers + 1)

    assert fuse_rms_norms(model) == len(norms)
    with torch.inference_mode():
        after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert all("forward" in vars(m) for m in norms)


class OffsetRMSNorm(torch.nn.Module):
    """A norm that scales by ``1 + weight`` (as Gemma's does): not what the fused op computes."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((dim,), 0.5))
        self.eps = 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1 + self.weight) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def test_a_norm_with_another_formula_keeps_its_forward() -> None:
    model = torch.nn.Sequential(OffsetRMSNorm(16))
    assert fuse_rms_norms(model) == 0
    assert "forward" not in vars(model[0])
