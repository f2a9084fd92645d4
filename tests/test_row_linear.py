"""Linear products on the CPU through the kernels measured fastest here: same logits, only where memory allows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from llm_middleware.engine.attention.kv_cache import KVCache
from llm_middleware.engine.attention.paged import ATTENTION_NAME, AttentionMetadata
from llm_middleware.engine.kernels.cpu import products as cpu_products
from llm_middleware.engine.model.attention_features import read_variants
from llm_middleware.engine.patching.fused_layers import fuse_layers
from llm_middleware.engine.patching.fused_norms import fuse_rms_norms
from llm_middleware.engine.patching.row_linear import RowLinear, use_row_kernel

# The kinds this build of PyTorch can run on float32 weights.
_AVAILABLE = list(cpu_products.candidates([(torch.randn(8, 16), None)], budget=2**30))


def _fused_model(model_dir: Path) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=ATTENTION_NAME).eval()
    fuse_rms_norms(model)
    fuse_layers(model, read_variants(model))
    return model


def _logits(model: torch.nn.Module, rows: int) -> torch.Tensor:
    config = model.config
    cache = KVCache(num_layers=config.num_hidden_layers, num_blocks=4, block_size=16,
                    num_kv_heads=config.num_key_value_heads, head_dim=config.head_dim, dtype=torch.float32,
                    devices=[torch.device("cpu")] * config.num_hidden_layers)
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])[:, :rows]
    meta = AttentionMetadata(kv_cache=cache, slot_mapping=torch.arange(rows), gather_blocks=None, mask=None,
                             causal_only=True)
    with torch.inference_mode():
        return model(ids, use_cache=False, llm_attention=meta).logits


@pytest.mark.parametrize("one_row", _AVAILABLE)
@pytest.mark.parametrize("rows", _AVAILABLE)
def test_every_kernel_keeps_the_logits(tiny_model_dir: Path, one_row: str, rows: str) -> None:
    model = _fused_model(tiny_model_dir)
    expected = [_logits(model, n) for n in (1, 6)]
    routed = use_row_kernel(model, one_row=one_row, rows=rows)
    layers = model.config.num_hidden_layers
    if (one_row, rows) == ("default", "default"):
        assert routed == 0
        return
    # Each layer's o and down projections and merged q/k/v and gate/up products, and the output layer.
    assert routed == 4 * layers + 1
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.o_proj.forward, RowLinear) and layer.self_attn.o_proj.forward.cpu is not None
    assert layer.mlp.forward.project.cpu is not None
    for n, logits in zip((1, 6), expected):
        torch.testing.assert_close(_logits(model, n), logits, rtol=1e-4, atol=1e-4)


def test_a_product_runs_the_kernel_of_its_row_count() -> None:
    calls: list[str] = []
    product = cpu_products.CpuProduct(lambda x: calls.append("one") or x, lambda x: calls.append("rows") or x, 16)
    product(torch.zeros(1, 1, 16))
    product(torch.zeros(3, 16))
    product(torch.zeros(1, 2, 16))
    assert calls == ["one", "rows", "rows"]


def test_the_fastest_kind_is_chosen_for_each_regime() -> None:
    weights = [(torch.randn(8, 16), None)]
    found = cpu_products.candidates(weights, budget=2**30)
    # A timer that makes the last available kind fastest for one row and the first fastest for many.
    kinds = list(found)

    def timer(kernels, inputs):  # noqa: ANN001, ANN202
        kind = next(k for k, v in found.items() if v is kernels)
        rank = kinds.index(kind)
        return float(len(kinds) - rank if inputs[0].shape[0] == 1 else rank)

    assert cpu_products.fastest(found, [16], torch.float32, 1, timer) == kinds[-1]
    assert cpu_products.fastest(found, [16], torch.float32, 32, timer) == kinds[0]


def test_ties_go_to_the_default_kernel() -> None:
    found = cpu_products.candidates([(torch.randn(8, 16), None)], budget=2**30)
    assert cpu_products.fastest(found, [16], torch.float32, 1, lambda kernels, inputs: 1.0) == "default"


def test_no_packed_copies_where_memory_is_short(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _fused_model(tiny_model_dir)
    weights = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.Linear))
    monkeypatch.setattr(cpu_products, "memory_bytes", lambda: 2 * weights)  # the copies would take half
    assert use_row_kernel(model) == 0
    assert "forward" not in vars(model.model.layers[0].self_attn.o_proj)
    assert model.model.layers[0].mlp.forward.project.cpu is None


def test_a_kernel_with_a_wrong_product_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(weight, bias):  # noqa: ANN001, ANN202
        return (lambda x: torch.nn.functional.linear(x, weight, bias) + 1), 0

    monkeypatch.setitem(cpu_products._PACKERS, "onednn", broken)  # noqa: SLF001
    assert "onednn" not in cpu_products.candidates([(torch.randn(8, 16), None)], budget=2**30)
    with pytest.raises(ValueError, match="onednn"):
        cpu_products.choose([(torch.randn(8, 16), None)], budget=2**30, one_row="onednn", rows="default")


def test_a_dtype_without_a_packed_product_keeps_f_linear() -> None:
    weight = torch.randn(8, 16, dtype=torch.float16)
    assert list(cpu_products.candidates([(weight, None)], budget=2**30)) == ["default"]
    products, one_row, rows = cpu_products.choose([(weight, None)], budget=2**30)
    assert (one_row, rows) == ("default", "default")
    x = torch.randn(3, 16, dtype=torch.float16)
    torch.testing.assert_close(products[0](x), torch.nn.functional.linear(x, weight), rtol=0, atol=0)


@pytest.mark.skipif(len(_AVAILABLE) < 2, reason="needs a packed kernel to choose from")
def test_large_models_are_timed_on_their_first_products(monkeypatch: pytest.MonkeyPatch) -> None:
    weights = [(torch.randn(8, 16), None) for _ in range(5)]
    monkeypatch.setattr(cpu_products, "_TIMED_BYTES", 2 * 8 * 16 * 4)  # two weights' worth
    seen: list[int] = []
    monkeypatch.setattr(cpu_products, "fastest",
                        lambda found, columns, dtype, rows: seen.append(len(columns)) or "default")
    products, _, _ = cpu_products.choose(weights, budget=2**30)
    assert len(products) == 5 and seen and set(seen) == {2}
