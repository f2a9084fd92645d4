"""Linear products on the CPU through oneDNN with packed weights: same logits, and only where memory allows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from llm_middleware.engine import row_linear
from llm_middleware.engine.attention import ATTENTION_NAME, AttentionMetadata
from llm_middleware.engine.fused_layers import fuse_layers
from llm_middleware.engine.fused_norms import fuse_rms_norms
from llm_middleware.engine.kv_cache import KVCache
from llm_middleware.engine.row_linear import RowLinear, use_row_kernel

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")


def _fused_model(model_dir: Path) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=ATTENTION_NAME).eval()
    fuse_rms_norms(model)
    fuse_layers(model)
    return model


def _logits(model: torch.nn.Module) -> torch.Tensor:
    config = model.config
    cache = KVCache(num_layers=config.num_hidden_layers, num_blocks=4, block_size=16,
                    num_kv_heads=config.num_key_value_heads, head_dim=config.head_dim, dtype=torch.float32,
                    devices=[torch.device("cpu")] * config.num_hidden_layers)
    meta = AttentionMetadata(kv_cache=cache, slot_mapping=torch.arange(6), gather_blocks=None, mask=None,
                             causal_only=True)
    with torch.inference_mode():
        return model(torch.tensor([[5, 17, 42, 7, 99, 3]]), use_cache=False, llm_attention=meta).logits


@needs_onednn
def test_packed_products_keep_the_logits(tiny_model_dir: Path) -> None:
    model = _fused_model(tiny_model_dir)
    expected = _logits(model)
    layers = model.config.num_hidden_layers
    # Each layer's o and down projections and merged q/k/v and gate/up products, and the output layer.
    assert use_row_kernel(model) == 4 * layers + 1
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.o_proj.forward, RowLinear) and layer.self_attn.o_proj.forward.packed is not None
    assert layer.self_attn.forward.project.packed is not None and layer.mlp.forward.project.packed is not None
    torch.testing.assert_close(_logits(model), expected, rtol=1e-4, atol=1e-4)


def test_no_packed_copies_where_memory_is_short(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _fused_model(tiny_model_dir)
    weights = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.Linear))
    monkeypatch.setattr(row_linear, "_memory_bytes", lambda: 2 * weights)  # the copies would take half
    assert use_row_kernel(model) == 0
    assert "forward" not in vars(model.model.layers[0].self_attn.o_proj)
    assert model.model.layers[0].mlp.forward.project.packed is None


def test_a_dtype_without_a_packed_product_keeps_f_linear() -> None:
    weight = torch.randn(8, 16, dtype=torch.float16)
    linear = RowLinear(weight, None, pack=True)
    assert linear.packed is None
    x = torch.randn(3, 16, dtype=torch.float16)
    torch.testing.assert_close(linear(x), torch.nn.functional.linear(x, weight), rtol=0, atol=0)
