"""The merged-projection attention and MLP swap: every reproducible layer is swapped, output kept, others left alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from llm_middleware.engine.attention.kv_cache import KVCache
from llm_middleware.engine.attention.paged import ATTENTION_NAME, AttentionMetadata
from llm_middleware.engine.model.attention_features import read_variants
from llm_middleware.engine.patching.fused_layers import fuse_layers
from llm_middleware.engine.patching.fused_norms import fuse_rms_norms


def _load(model_dir: Path, attention: str) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention).eval()
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():  # loaded norms are all ones: give them a shape worth checking
        if type(module).__name__.endswith("RMSNorm"):
            module.weight.data = 1 + 0.3 * torch.randn(module.weight.shape, generator=generator)
    return model


def _cache(model: torch.nn.Module) -> KVCache:
    config = model.config
    return KVCache(num_layers=config.num_hidden_layers, num_blocks=4, block_size=16,
                   num_kv_heads=config.num_key_value_heads, head_dim=config.head_dim, dtype=torch.float32,
                   devices=[torch.device("cpu")] * config.num_hidden_layers)


@pytest.mark.parametrize("arch_fixture", ["tiny_model_dir", "tiny_llama_dir"])
def test_swaps_every_layer_and_keeps_the_logits(arch_fixture: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(arch_fixture)
    reference = _load(model_dir, "sdpa")
    model = _load(model_dir, ATTENTION_NAME)
    fuse_rms_norms(model)
    layers = model.config.num_hidden_layers
    assert fuse_layers(model, read_variants(model)) == (layers, layers)
    cache = _cache(model)

    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert "forward" in vars(attn) and "forward" in vars(mlp)
    # The original modules keep views of the merged weights: no second copy.
    assert attn.q_proj.weight.untyped_storage().data_ptr() == attn.v_proj.weight.untyped_storage().data_ptr()
    assert mlp.gate_proj.weight.untyped_storage().data_ptr() == mlp.up_proj.weight.untyped_storage().data_ptr()

    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    slots = torch.tensor([9, 4, 30, 0, 17, 12])  # scattered, as block tables make them
    meta = AttentionMetadata(kv_cache=cache, slot_mapping=slots, gather_blocks=None, mask=None, causal_only=True)
    with torch.inference_mode():
        expected = reference(ids).logits
        actual = model(ids, use_cache=False, llm_attention=meta).logits
    # Float32 products summed in another order: within a few roundings of the logits' size.
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().mean()))
    # The new keys and values went to their slots, and nowhere else.
    for layer_cache in cache.keys + cache.values:
        written = torch.zeros(layer_cache.shape[0], dtype=torch.bool)
        written[slots] = True
        assert layer_cache[slots].abs().sum(dim=(1, 2)).all() and not layer_cache[~written].any()


def test_layers_with_another_formula_keep_their_forward(tiny_model_dir: Path) -> None:
    model = _load(tiny_model_dir, ATTENTION_NAME)
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp

    class ScaledAttention(type(attn)):  # type: ignore[misc]
        def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            out, weights = super().forward(*args, **kwargs)
            return 2 * out, weights

    class ScaledMLP(type(mlp)):  # type: ignore[misc]
        def forward(self, x):  # type: ignore[no-untyped-def]
            return super().forward(2 * x)

    attn.__class__, mlp.__class__ = ScaledAttention, ScaledMLP
    fuse_rms_norms(model)
    layers = model.config.num_hidden_layers
    assert fuse_layers(model, read_variants(model)) == (layers - 1, layers - 1)
    assert "forward" not in vars(attn) and "forward" not in vars(mlp)
    # A swap that did not reproduce gives each projection its own storage back.
    assert attn.q_proj.weight.untyped_storage().data_ptr() != attn.k_proj.weight.untyped_storage().data_ptr()
    assert mlp.gate_proj.weight.untyped_storage().data_ptr() != mlp.up_proj.weight.untyped_storage().data_ptr()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_projections_with_biases_are_merged_with_their_biases(tmp_path: Path, arch: str) -> None:
    # Qwen2 has biases on q/k/v (not on o); Llama can have them on every attention and MLP
    # projection: the merged products must add them.
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    if arch == "qwen2":
        source = Qwen2ForCausalLM(Qwen2Config(**shape))
    else:
        source = LlamaForCausalLM(LlamaConfig(attention_bias=True, mlp_bias=True, **shape))
    for module in source.modules():
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            torch.nn.init.normal_(module.bias, std=0.5)
    source.save_pretrained(tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=ATTENTION_NAME).eval()
    cache = KVCache(num_layers=2, num_blocks=4, block_size=16, num_kv_heads=2, head_dim=16,
                    dtype=torch.float32, devices=[torch.device("cpu")] * 2)
    fuse_rms_norms(model)
    assert fuse_layers(model, read_variants(model)) == (2, 2)
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    meta = AttentionMetadata(kv_cache=cache, slot_mapping=torch.arange(6), gather_blocks=None, mask=None, causal_only=True)
    with torch.inference_mode():
        torch.testing.assert_close(model(ids, use_cache=False, llm_attention=meta).logits, reference(ids).logits,
                                   rtol=1e-5, atol=1e-5)


def test_quantized_projections_keep_their_forward(tiny_model_dir: Path) -> None:
    # bitsandbytes' layers subclass nn.Linear and pack their weights: their shapes must not size
    # the probe's cache, and such a layer keeps its forward while the others are swapped.
    model = _load(tiny_model_dir, ATTENTION_NAME)
    variants = read_variants(model)
    attn = model.model.layers[0].self_attn

    class PackedLinear(torch.nn.Linear):
        pass

    packed = PackedLinear(attn.k_proj.in_features, attn.k_proj.out_features, bias=False)
    packed.weight = torch.nn.Parameter(attn.k_proj.weight.detach().reshape(-1, 2)[:, :1].clone(), requires_grad=False)
    attn.k_proj = packed
    fuse_rms_norms(model)
    layers = model.config.num_hidden_layers
    assert fuse_layers(model, variants) == (layers - 1, layers)
    assert "forward" not in vars(attn)
