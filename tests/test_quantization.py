"""Weights packed to 4 and 8 bits by the engine (``quantize="4bit"``/``"8bit"``), on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from arch_models import greedy
from engine_state import default_worker
from llm_middleware.engine import Engine
from llm_middleware.engine.model.footprint import weight_bytes
from llm_middleware.engine.quantization import packing
from llm_middleware.engine.quantization.linear import PackedLinear
from quantized_reference import round_tripped


@pytest.mark.parametrize("bits,bound", [(4, 0.12), (8, 0.01)])
def test_quantize_round_trip_is_close_and_exact_on_its_own_values(bits: int, bound: float) -> None:
    torch.manual_seed(0)
    weight = torch.randn(24, 300) * 0.05  # K padded to 384 inside
    weight[3] = 0.25  # a flat row: every group one value
    packed = packing.quantize(weight, bits)
    assert packed.words.shape == (24, 384 * bits // 32)
    back = packing.dequantize(packed, torch.float64)
    assert back.shape == (24, 300)
    assert float((back - weight.double()).norm() / weight.double().norm()) < bound
    torch.testing.assert_close(back[3], torch.full((300,), 0.25, dtype=torch.float64), rtol=1e-6, atol=1e-7)
    # What the packed form stands for packs to itself.
    again = packing.dequantize(packing.quantize(back.float(), bits), torch.float64)
    torch.testing.assert_close(again, back, rtol=1e-6, atol=1e-7)
    codes = packing.unpack(packed.words, bits)
    assert torch.equal(packing.pack(codes, bits), packed.words)
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**bits


@pytest.mark.parametrize("bits", [4, 8])
def test_packed_linear_matches_float64_reference(bits: int) -> None:
    torch.manual_seed(1)
    linear = torch.nn.Linear(200, 48)
    layer = PackedLinear.from_linear(linear, bits, torch.device("cpu"))
    x = torch.randn(3, 5, 200)
    reference = x.double() @ packing.dequantize(layer.packed, torch.float64).T + linear.bias.double()
    torch.testing.assert_close(layer(x).double(), reference, rtol=1e-5, atol=1e-5)


def test_merged_layers_keep_views_of_one_packed_weight() -> None:
    torch.manual_seed(2)
    layers = [PackedLinear.from_linear(torch.nn.Linear(256, n, bias=False), 4, torch.device("cpu")) for n in (32, 8, 8)]
    x = torch.randn(2, 256)
    apart = torch.cat([layer(x) for layer in layers], -1)
    merged = PackedLinear.merge(layers)
    assert merged is not None and merged.out_features == 48
    torch.testing.assert_close(merged(x), apart)
    storage = merged.words.untyped_storage().data_ptr()
    assert all(layer.words.untyped_storage().data_ptr() == storage for layer in layers)
    torch.testing.assert_close(torch.cat([layer(x) for layer in layers], -1), apart)
    layers[1].own()
    assert layers[1].words.untyped_storage().data_ptr() != storage
    assert PackedLinear.merge([layers[0], PackedLinear.from_linear(torch.nn.Linear(256, 8), 8, torch.device("cpu"))]) is None


@pytest.mark.parametrize("quantize,bits", [("4bit", 4), ("8bit", 8)])
def test_packed_engine_greedy_equals_generate(tiny_model_dir: Path, quantize: str, bits: int) -> None:
    prompt = "The quick brown fox jumps over the lazy dog"
    eng = Engine(tiny_model_dir, quantize=quantize, device="cpu", dtype="float32", seed=0)
    try:
        eng.wait_ready_sync()
        model = default_worker(eng).model
        assert type(model.lm_head) is PackedLinear
        assert not any(type(m) is torch.nn.Linear for m in model.modules())
        # Packed projections keep the merged q/k/v and gate/up forwards.
        assert all("forward" in vars(layer.self_attn) and "forward" in vars(layer.mlp) for layer in model.model.layers)
        done = eng.complete_sync(prompt, max_tokens=24, temperature=0, ignore_eos=True)
        stored = eng.stats()["weight_bytes"]
    finally:
        eng.shutdown()
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert stored < weight_bytes(full)
    ids = AutoTokenizer.from_pretrained(tiny_model_dir).encode(prompt, add_special_tokens=False)
    assert done.choices[0].token_ids == greedy(round_tripped(tiny_model_dir, bits, "cpu"), ids, 24)
