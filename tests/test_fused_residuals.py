"""Decoder layers with fused residual adds: swapped where they reproduce, the norm handed over, others untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from llm_middleware.engine.patching import fused_residuals
from llm_middleware.engine.patching.fused_norms import fuse_rms_norms
from llm_middleware.engine.patching.fused_residuals import fuse_residuals


def _load(model_dir: Path) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    generator = torch.Generator().manual_seed(5)
    for module in model.modules():  # loaded norms are all ones: give them a shape worth checking
        if type(module).__name__.endswith("RMSNorm"):
            module.weight.data = 1 + 0.3 * torch.randn(module.weight.shape, generator=generator)
    return model


def _count_handed(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, for each norm that could take a handed-over result, whether it did."""
    taken: list[bool] = []
    take = fused_residuals._Handoff.take

    def spy(self: fused_residuals._Handoff, hidden: torch.Tensor) -> torch.Tensor | None:
        normed = take(self, hidden)
        taken.append(normed is not None)
        return normed

    monkeypatch.setattr(fused_residuals._Handoff, "take", spy)
    return taken


@pytest.mark.parametrize("arch_fixture", ["tiny_model_dir", "tiny_llama_dir"])
def test_every_layer_hands_its_norm_over_and_the_logits_are_kept(
    arch_fixture: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir: Path = request.getfixturevalue(arch_fixture)
    reference = _load(model_dir)
    model = _load(model_dir)
    fuse_rms_norms(model)
    layers = model.config.num_hidden_layers
    assert fuse_residuals(model) == layers
    taken = _count_handed(monkeypatch)
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    with torch.inference_mode():
        expected = reference(ids).logits
        # Within the bound of the engine's own probe: roundings of the logits' size, which the layers amplify.
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().mean()))
    # Every layer's last norm (the next layer's input norm, then the final norm) was handed over.
    assert taken == [True] * layers
    assert all(layer.forward.handoff.hidden is None for layer in model.model.layers)  # nothing held after a step


def test_a_layer_with_another_formula_keeps_its_forward(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference, model = _load(tiny_llama_dir), _load(tiny_llama_dir)
    for m in (reference, model):  # the second layer normalises twice its input (a formula the swap does not have)
        layer = m.model.layers[1]

        class DoubledInput(type(layer)):  # type: ignore[misc]
            def forward(self, hidden_states, *args, **kwargs):  # type: ignore[no-untyped-def]
                return super().forward(2 * hidden_states, *args, **kwargs)

        layer.__class__ = DoubledInput
    fuse_rms_norms(model)
    layers = model.config.num_hidden_layers
    assert fuse_residuals(model) == layers - 1
    assert "forward" not in vars(model.model.layers[1])
    taken = _count_handed(monkeypatch)
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    with torch.inference_mode():
        expected = reference(ids).logits
        # Within the bound of the engine's own probe: roundings of the logits' size, which the layers amplify.
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().mean()))
    # The first layer's handed norm went unused (the second layer normalised a new tensor); the
    # layers after the second hand theirs over.
    assert taken == [False] + [True] * (layers - 2)


def test_positional_arguments_take_the_models_forward(tiny_model_dir: Path) -> None:
    model = _load(tiny_model_dir)
    fuse_rms_norms(model)
    fuse_residuals(model)
    layer = model.model.layers[0]
    hidden = torch.randn(1, 4, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(4)[None]
    rotary = model.model.rotary_emb(hidden, positions)
    with torch.inference_mode():
        expected = type(layer).forward(layer, hidden, None, position_embeddings=rotary)
        actual = layer(hidden, None, position_embeddings=rotary)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert layer.forward.handoff.hidden is None
