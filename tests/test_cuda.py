"""CUDA paths: the paged decode kernel (sliding windows, soft-capping, sinks), captured decode graphs, bf16,
packed 4-bit and 8-bit weights and NF4.

Skipped where no GPU is present (CI); run on a GPU machine with ``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from arch_models import ARCHS, greedy, load_reference
from engine_state import default_worker, idle_stats
from test_prefix_cache import OPTIONS as PREFIX_OPTIONS
from test_prefix_cache import (CASES, concurrent_prompts, greedy_cases, preemption_and_cancellation, seeded_sampling,
                               shutdown_releases_every_block)

from llm_middleware.engine import Engine
from quantized_reference import round_tripped

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,heads,kv_heads,head_dim", [(1, 8, 2, 64), (5, 32, 8, 128), (33, 4, 4, 64)])
def test_paged_decode_kernel_matches_reference(dtype, batch, heads, kv_heads, head_dim) -> None:
    from llm_middleware.engine.kernels.cuda.paged_decode import paged_decode_attention

    torch.manual_seed(batch)
    block_size, num_blocks = 16, 1024
    k_cache = torch.randn(num_blocks * block_size + 1, kv_heads, head_dim, device="cuda", dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    lens = torch.randint(1, 300, (batch,))
    max_blocks = int((lens.max() + block_size - 1) // block_size)
    perm = torch.randperm(num_blocks)[: batch * max_blocks].view(batch, max_blocks)
    query = torch.randn(batch, heads, 1, head_dim, device="cuda", dtype=dtype)
    out = paged_decode_attention(query, k_cache, v_cache, perm.int().cuda(), lens.int().cuda(), head_dim**-0.5,
                                 block_size)
    for b in range(batch):
        n = int(lens[b])
        slots = (perm[b, torch.arange(n) // block_size] * block_size + torch.arange(n) % block_size).cuda()
        k = k_cache[slots].double().transpose(0, 1).repeat_interleave(heads // kv_heads, 0)  # [H, n, D]
        v = v_cache[slots].double().transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
        q = query[b, :, 0].double()[:, None]  # [H, 1, D]
        ref = torch.softmax(q @ k.transpose(1, 2) * head_dim**-0.5, dim=-1) @ v  # [H, 1, D]
        got = out[b, 0].double()
        err = (got - ref[:, 0]).norm() / ref.norm()
        assert err < (1e-5 if dtype == torch.float32 else 1e-2), (b, float(err))


@pytest.mark.parametrize("cuda_graphs,compile_model", [(True, False), (False, False), (True, True)])
async def test_greedy_equals_generate_on_cuda(tiny_model_dir: Path, cuda_graphs: bool, compile_model: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = ["Hello", "The quick brown fox jumps over the lazy dog again", "东京 🚀 café"]
    eng = Engine(tiny_model_dir, device="cuda", dtype="float32", max_batch_size=8, cuda_graphs=cuda_graphs,
                 compile=compile_model, seed=0)
    try:
        await eng.wait_ready()

        async def run(i: int, prompt: str) -> list[int]:
            await asyncio.sleep(0.02 * i)
            done = await eng.complete(prompt, max_tokens=40, temperature=0, ignore_eos=True)
            return done.choices[0].token_ids

        got = await asyncio.gather(*(run(i, p) for i, p in enumerate(prompts)))
    finally:
        eng.shutdown()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).cuda()
    for prompt, tokens in zip(prompts, got):
        ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)], device="cuda")
        ref = model.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert tokens == ref[0, ids.shape[1]:].tolist(), prompt


@pytest.mark.parametrize("quantize", [None, "4bit", "8bit", "nf4"])
def test_bf16_and_quantized_generate_on_cuda(tiny_model_dir: Path, quantize: str | None) -> None:
    eng = Engine(tiny_model_dir, device="cuda", dtype="bfloat16", quantize=quantize, seed=0)
    try:
        eng.wait_ready_sync()
        done = eng.complete_sync("Hello", max_tokens=20, n=3, temperature=1.0, seed=1, ignore_eos=True)
        assert done.usage.completion_tokens == 60
        again = eng.complete_sync("Hello", max_tokens=20, n=3, temperature=1.0, seed=1, ignore_eos=True)
        assert [c.token_ids for c in again.choices] == [c.token_ids for c in done.choices]
        stats = eng.stats()
        assert stats["free_kv_blocks"] == stats["total_kv_blocks"]
    finally:
        eng.shutdown()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 5, 64, 300])
def test_packed_products_match_float64_reference(bits: int, dtype: torch.dtype, rows: int) -> None:
    # One row: gemv; up to 256: gemm (split along K at few rows); more: unpacked, then cuBLAS.
    from llm_middleware.engine.kernels.cuda import quant_products
    from llm_middleware.engine.quantization import packing
    from llm_middleware.engine.quantization.linear import PackedLinear

    torch.manual_seed(rows)
    linear = torch.nn.Linear(700, 200).to("cuda", dtype)  # K padded to 768; N not a multiple of any block
    layer = PackedLinear.from_linear(linear, bits, torch.device("cuda"))
    exact = packing.dequantize(layer.packed, torch.float64)
    x = torch.randn(rows, 700, device="cuda", dtype=dtype)
    ref = x.double() @ exact.T + linear.bias.double()
    bound = 1e-5 if dtype == torch.float32 else 1e-2
    for _ in range(2):  # split-K tile counters are zero again for the next product
        err = (layer(x).double() - ref).norm() / ref.norm()
        assert err < bound, float(err)
    assert int(layer.counts.abs().sum()) == 0
    unpacked = quant_products.dequantize(layer.packed, dtype).double()
    assert float((unpacked - exact).abs().max() / exact.abs().max()) < bound / 2


@pytest.mark.parametrize("rows", [1, 8])
def test_merged_packed_products_match_their_parts(rows: int) -> None:
    # A merged layer's parts read views of its tensors (rows of the words, columns of the scales).
    from llm_middleware.engine.quantization.linear import PackedLinear

    torch.manual_seed(3)
    parts = [PackedLinear.from_linear(torch.nn.Linear(512, n, bias=False).cuda(), 4, torch.device("cuda"))
             for n in (256, 64, 64)]
    x = torch.randn(rows, 512, device="cuda")
    apart = torch.cat([p(x) for p in parts], -1)
    merged = PackedLinear.merge(parts)
    torch.testing.assert_close(merged(x), apart, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([p(x) for p in parts], -1), apart, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quantize,bits", [("4bit", 4), ("8bit", 8)])
async def test_packed_greedy_equals_generate_on_cuda(tiny_model_dir: Path, quantize: str, bits: int) -> None:
    from transformers import AutoTokenizer

    prompts = ["Hello", "The quick brown fox jumps over the lazy dog again", "东京 🚀 café"]
    eng = Engine(tiny_model_dir, device="cuda", dtype="float32", max_batch_size=8, quantize=quantize, seed=0)
    try:
        await eng.wait_ready()
        assert default_worker(eng).runner.decoder.graphs  # the packed products are captured too

        async def run(i: int, prompt: str) -> list[int]:
            await asyncio.sleep(0.02 * i)
            done = await eng.complete(prompt, max_tokens=40, temperature=0, ignore_eos=True)
            return done.choices[0].token_ids

        got = await asyncio.gather(*(run(i, p) for i, p in enumerate(prompts)))
    finally:
        eng.shutdown()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = round_tripped(tiny_model_dir, bits, "cuda")
    for prompt, tokens in zip(prompts, got):
        assert tokens == greedy(model, tok.encode(prompt, add_special_tokens=False), 40), prompt


@pytest.mark.parametrize("ids_device,draws_device", [("cpu", "cuda"), ("cuda", "cpu")])
def test_draws_feed_inputs_on_another_device(ids_device: str, draws_device: str) -> None:
    # A model split over devices keeps its input embeddings and its output layer (where the
    # draws are made) apart: the next step's inputs must still take the draws.
    from llm_middleware.engine.sampling.sampler import feed_draws

    ids = torch.tensor([5, -1, -1, 7], device=ids_device)
    sources = torch.tensor([-1, 1, 0, -1], device=ids_device)
    feed_draws(ids, sources, torch.tensor([11, 12], device=draws_device))
    assert ids.tolist() == [5, 12, 11, 7]


def test_prompt_chunks_are_larger_on_cuda(tiny_model_dir: Path) -> None:
    eng = Engine(tiny_model_dir, device="cuda")
    try:
        eng.wait_ready_sync()
        assert default_worker(eng).scheduler.max_prefill_tokens == 4096
    finally:
        eng.shutdown()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm", [True, False])
def test_rope_cache_kernel_matches_reference(dtype: torch.dtype, norm: bool) -> None:
    from llm_middleware.engine.kernels.cuda.rope_cache import rope_and_cache

    tokens, heads, kv_heads, dim, eps = 7, 8, 2, 64, 1e-6
    gen = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, device="cuda", generator=gen).to(dtype)
    positions = torch.arange(10, 10 + tokens, device="cuda", dtype=torch.float32)
    freqs = positions[:, None] / 10000 ** (torch.arange(0, dim, 2, device="cuda") / dim)[None, :]
    angles = torch.cat([freqs, freqs], dim=-1)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    q_weight = (1 + 0.3 * torch.randn(dim, device="cuda", generator=gen)).to(dtype) if norm else None
    k_weight = (1 + 0.3 * torch.randn(dim, device="cuda", generator=gen)).to(dtype) if norm else None
    k_cache = torch.zeros(40, kv_heads, dim, device="cuda", dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([3, 9, 4, 30, 31, 0, 12], device="cuda")

    q, k, v = qkv.float().view(tokens, -1, dim).split([heads, kv_heads, kv_heads], 1)
    if norm:
        q = torch.nn.functional.rms_norm(q, (dim,), q_weight.float(), eps)
        k = torch.nn.functional.rms_norm(k, (dim,), k_weight.float(), eps)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        half = torch.cat((-x[..., dim // 2 :], x[..., : dim // 2]), dim=-1)
        return x * cos.float()[:, None] + half * sin.float()[:, None]

    q, k = rotate(q), rotate(k)
    rope_and_cache(qkv, cos, sin, q_weight, k_weight, eps, slots, k_cache, v_cache, heads)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    out_q, out_k, out_v = qkv.float().view(tokens, -1, dim).split([heads, kv_heads, kv_heads], 1)
    torch.testing.assert_close(out_q, q, rtol=tol, atol=tol)
    torch.testing.assert_close(out_k, k, rtol=tol, atol=tol)
    torch.testing.assert_close(k_cache[slots].float(), k, rtol=tol, atol=tol)
    torch.testing.assert_close(v_cache[slots].float(), v, rtol=0, atol=0)
    torch.testing.assert_close(out_v, v, rtol=0, atol=0)  # values are only copied
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[slots.cpu()] = False
    assert not k_cache[untouched.cuda()].any() and not v_cache[untouched.cuda()].any()


def test_layers_run_the_fused_kernel_on_cuda(tiny_model_dir: Path) -> None:
    from llm_middleware.engine.kernels.cuda.rope_cache import rope_and_cache
    from llm_middleware.engine.patching.row_linear import RowLinear

    eng = Engine(tiny_model_dir, device="cuda", dtype="bfloat16")
    try:
        eng.wait_ready_sync()
        model = default_worker(eng).model
        attention = [layer.self_attn.forward for layer in model.model.layers]
        assert all(getattr(f, "kernel", None) is rope_and_cache for f in attention)
        assert all(getattr(layer.forward, "kernel", None) is not None for layer in model.model.layers)
        assert all(layer.mlp.forward.silu_mul is not None for layer in model.model.layers)
        linears = [model.lm_head] + [layer.self_attn.o_proj for layer in model.model.layers]
        assert all(isinstance(m.forward, RowLinear) and m.forward.block_k for m in linears)
        assert eng.complete_sync("Hello", max_tokens=8, temperature=0, ignore_eos=True).usage.completion_tokens == 8
    finally:
        eng.shutdown()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k,bias", [(1001, 384, True), (2560, 4096, False), (64, 96, False)])
def test_gemv_matches_linear(dtype: torch.dtype, n: int, k: int, bias: bool) -> None:
    from llm_middleware.engine.patching.row_linear import RowLinear

    gen = torch.Generator(device="cuda").manual_seed(n)
    weight = torch.randn(n, k, device="cuda", generator=gen).to(dtype)
    b = torch.randn(n, device="cuda", generator=gen).to(dtype) if bias else None
    linear = RowLinear(weight, b)
    assert linear.block_k is not None
    one = torch.randn(1, 1, k, device="cuda", generator=gen).to(dtype)
    expected = torch.nn.functional.linear(one.double(), weight.double(), None if b is None else b.double())
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    got = linear(one)
    assert got.shape == (1, 1, n) and got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol * float(expected.abs().mean()))
    rows = torch.randn(3, k, device="cuda", generator=gen).to(dtype)  # more rows: the library's product
    torch.testing.assert_close(linear(rows), torch.nn.functional.linear(rows, weight, b), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm_and_silu_mul_kernels_match_the_models_ops(dtype: torch.dtype) -> None:
    from llm_middleware.engine.kernels.cuda.row_ops import add_rms_norm, silu_mul

    gen = torch.Generator(device="cuda").manual_seed(0)
    residual, delta = (torch.randn(5, 3, 2560, device="cuda", generator=gen).to(dtype) for _ in range(2))
    weight = (1 + 0.3 * torch.randn(2560, device="cuda", generator=gen)).to(dtype)
    total, normed = add_rms_norm(residual, delta, weight, 1e-6)
    expected_total = residual + delta
    x = expected_total.float()
    expected = weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
    torch.testing.assert_close(total, expected_total, rtol=0, atol=0)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(normed.float(), expected.float(), rtol=tol, atol=tol)

    gate_up = torch.randn(4, 1, 2 * 1500, device="cuda", generator=gen).to(dtype)  # not a multiple of the block
    gate, up = gate_up.split(1500, -1)
    torch.testing.assert_close(silu_mul(gate_up).float(), (torch.nn.functional.silu(gate) * up).float(),
                               rtol=tol, atol=tol)


def test_building_a_demo_model_on_cuda_leaves_no_memory_cached(tmp_path: Path) -> None:
    from llm_middleware.demo_model import build_demo_model

    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    build_demo_model(tmp_path / "model", size="small", device="cuda", dtype="bfloat16")
    assert torch.cuda.memory_reserved() == before


#: The paged decode kernel's variants: a sliding window, soft-capped scores, sinks, and all three.
_KERNEL_VARIANTS = {"window": {"window": 100}, "softcap": {"softcap": 5.0}, "sinks": {"sinks": True},
                    "all": {"window": 100, "softcap": 5.0, "sinks": True}}


@pytest.mark.parametrize("variant", _KERNEL_VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_decode_kernel_computes_windows_softcap_and_sinks(dtype: torch.dtype, variant: str) -> None:
    from llm_middleware.engine.kernels.cuda.paged_decode import paged_decode_attention

    gen = torch.Generator().manual_seed(3)
    batch, heads, kv_heads, head_dim, block_size, num_blocks = 5, 8, 2, 64, 16, 80
    k_cache = torch.randn(num_blocks * block_size + 1, kv_heads, head_dim, generator=gen).to("cuda", dtype)
    v_cache = torch.randn(k_cache.shape, generator=gen).to("cuda", dtype)
    # One token, one tile, a window starting inside the first tile of 64 keys and one past it.
    lens = torch.tensor([1, 7, 70, 130, 200])
    max_blocks = -(-int(lens.max()) // block_size)
    perm = torch.randperm(num_blocks, generator=gen)[: batch * max_blocks].view(batch, max_blocks)
    query = torch.randn(batch, heads, 1, head_dim, generator=gen).to("cuda", dtype)
    options: dict[str, Any] = dict(_KERNEL_VARIANTS[variant])
    if options.pop("sinks", False):
        options["sinks"] = (2 * torch.randn(heads, generator=gen)).to("cuda", dtype)
    scale = head_dim**-0.5
    out = paged_decode_attention(query, k_cache, v_cache, perm.int().cuda(), lens.int().cuda(), scale, block_size,
                                 **options)
    window, softcap, sinks = options.get("window"), options.get("softcap"), options.get("sinks")
    for b in range(batch):
        n = int(lens[b])
        first = max(0, n - window) if window else 0
        positions = torch.arange(first, n)
        slots = (perm[b, positions // block_size] * block_size + positions % block_size).cuda()
        k = k_cache[slots].double().transpose(0, 1).repeat_interleave(heads // kv_heads, 0)  # [H, n, D]
        v = v_cache[slots].double().transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
        scores = query[b, :, 0].double()[:, None] @ k.transpose(1, 2) * scale  # [H, 1, n]
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        if sinks is not None:
            scores = torch.cat([scores, sinks.double().view(heads, 1, 1)], -1)
        ref = torch.softmax(scores, dim=-1)[..., : len(positions)] @ v  # [H, 1, D]
        err = (out[b, 0].double() - ref[:, 0]).norm() / ref.norm()
        assert err < (1e-5 if dtype == torch.float32 else 1e-2), (b, float(err))


@pytest.mark.parametrize("cuda_graphs,chunk", [(True, 8), (False, 8), (True, None)],
                         ids=["graphs-chunked", "eager-chunked", "graphs-whole"])
@pytest.mark.parametrize("arch", ARCHS)
async def test_window_softcap_and_sink_models_equal_generate_on_cuda(arch: str, cuda_graphs: bool, chunk: int | None,
                                                                   arch_model_dir: Any,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    # Sliding windows (Mistral; Gemma's and gpt-oss's local layers), soft-capping (Gemma 2) and sinks
    # (gpt-oss) through prompt chunks and the Triton decode kernel, captured in graphs or not; the
    # longest prompt first, so that without a chunk budget it is prefilled alone, past its window.
    from transformers import AutoTokenizer

    model_dir = arch_model_dir(arch)
    text = "The quick brown fox jumps over the lazy dog, and then it jumps again over the other dog"
    ids = AutoTokenizer.from_pretrained(model_dir).encode(text, add_special_tokens=False)
    prompts = [ids[:42], ids[:8], ids[:20]]
    eng = Engine(model_dir, device="cuda", dtype="float32", max_batch_size=4, max_prefill_tokens=chunk,
                 cuda_graphs=cuda_graphs, seed=0)
    try:
        await eng.wait_ready()
        decoder = default_worker(eng).runner.decoder
        assert decoder is not None
        if cuda_graphs:
            # Captured, or cleanly eager where the forward cannot be captured (gpt-oss's experts copy a
            # host tensor mid-step on some transformers versions).
            assert decoder.graphs or "cannot be captured" in caplog.text
        else:
            assert not decoder.graphs

        async def run(i: int, prompt: list[int]) -> list[int]:
            await asyncio.sleep(0.02 * i)
            done = await eng.complete(prompt, max_tokens=32, temperature=0, ignore_eos=True)
            return done.choices[0].token_ids

        got = await asyncio.gather(*(run(i, p) for i, p in enumerate(prompts)))
    finally:
        eng.shutdown()
    model = load_reference(model_dir).cuda()
    assert got == [greedy(model, p, 32) for p in prompts]


# ---- prefix caching on CUDA: captured decode graphs and async scheduling on ----------------------------------


@pytest.fixture(scope="module")
def cuda_prefix_engines(tiny_model_dir: Path) -> Iterator[tuple[Engine, Engine]]:
    """A CUDA engine with prefix caching and its reference without, both with graphs and async scheduling."""
    engines = [Engine(tiny_model_dir, device="cuda", dtype="float32", cuda_graphs=True, async_scheduling=True,
                      prefix_caching=caching, **PREFIX_OPTIONS) for caching in (True, False)]
    try:
        for engine in engines:
            engine.wait_ready_sync()
        assert all(default_worker(e).pipelining.enabled and default_worker(e).pipelining.prompts for e in engines)
        yield engines[0], engines[1]
    finally:
        for engine in engines:
            engine.shutdown()


async def test_prefix_cache_keeps_greedy_output_on_cuda(cuda_prefix_engines: tuple[Engine, Engine]) -> None:
    cached, uncached = cuda_prefix_engines
    # Prompts sharing nothing, part of a block, whole blocks, the whole prompt: the same tokens as without the cache.
    found = await greedy_cases(cached, uncached)
    assert found == {name: count for name, (_, count) in CASES.items()}
    await concurrent_prompts(cached, uncached)
    stats = await idle_stats(cached, timeout=30)
    assert stats["free_kv_blocks"] == stats["total_kv_blocks"]


async def test_prefix_cache_keeps_seeded_sampling_on_cuda(cuda_prefix_engines: tuple[Engine, Engine]) -> None:
    await seeded_sampling(*cuda_prefix_engines)


def test_prefix_cache_counts_stay_exact_on_cuda(tiny_model_dir: Path,
                                                cuda_prefix_engines: tuple[Engine, Engine]) -> None:
    options = dict(device="cuda", dtype="float32", cuda_graphs=True, async_scheduling=True, **PREFIX_OPTIONS)
    small = Engine(tiny_model_dir, kv_cache_blocks=10, max_model_len=32, **options)
    try:
        small.wait_ready_sync()
        preemption_and_cancellation(small, cuda_prefix_engines[1])
    finally:
        small.shutdown()
    engine = Engine(tiny_model_dir, **options)
    try:
        engine.wait_ready_sync()
        shutdown_releases_every_block(engine)
    finally:
        engine.shutdown()
