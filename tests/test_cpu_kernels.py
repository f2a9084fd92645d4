"""The CPU layer kernels: results against PyTorch ops, both compiled forms, and what happens where numba fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llm_middleware.engine.kernels.cpu import numba_support
from llm_middleware.engine.kernels.cpu import row_ops as cpu_ops
from llm_middleware.engine.kernels.cpu.numba_support import numba
from llm_middleware.engine.patching.fused_layers import _rotate_half

pytestmark = pytest.mark.skipif(not cpu_ops.available(torch.float32), reason="needs numba")


@pytest.fixture(params=["calling-thread", "numba-threads"])
def form(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(numba_support, "PARALLEL_WORK", 0 if request.param == "numba-threads" else 2**62)
    return request.param


#: Within a few roundings: bfloat16 model ops round after each op, the kernels once.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])


def model_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The norm as Llama-family models write it: in float32, rounded to the input's dtype before the weight."""
    single = x.float()
    return weight * (single * torch.rsqrt(single.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def test_bfloat16_bits_widen_and_round_as_pytorch_converts() -> None:
    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)  # every bfloat16, NaNs included
    widen, narrow = numba_support.widen, numba_support.narrow

    @numba.njit
    def widen_each(bits, out):  # noqa: ANN001, ANN202
        for i in range(bits.size):
            out[i] = widen(bits[i])

    @numba.njit
    def narrow_each(values, out):  # noqa: ANN001, ANN202
        for i in range(values.size):
            out[i] = narrow(values[i], out)

    widened = np.empty(every.numel(), np.float32)
    widen_each(every.numpy(), widened)
    torch.testing.assert_close(torch.from_numpy(widened), every.view(torch.bfloat16).float(), rtol=0, atol=0,
                               equal_nan=True)
    gen = torch.Generator().manual_seed(2)
    ties = (every.view(torch.bfloat16).float().view(torch.int32) | 0x8000).view(torch.float32)  # halfway between two
    values = torch.cat([torch.randn(10000, generator=gen) * 10.0 ** torch.randint(-40, 39, (10000,), generator=gen),
                        ties, torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 3.4e38, 1e-45])])
    rounded = np.empty(values.numel(), np.int16)
    narrow_each(values.numpy(), rounded)
    expected = values.to(torch.bfloat16)
    finite = ~expected.isnan()
    assert torch.equal(torch.from_numpy(rounded)[finite], expected.view(torch.int16)[finite])
    assert torch.from_numpy(rounded).view(torch.bfloat16)[~finite].isnan().all()


@DTYPES
@pytest.mark.parametrize("norms", [True, False])
def test_rope_and_cache_matches_the_model_ops(form: str, norms: bool, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    tokens, heads, kv_heads, dim = 5, 4, 2, 8
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=gen).to(dtype)
    cos, sin = (torch.randn(tokens, dim, generator=gen).to(dtype) for _ in range(2))
    q_weight, k_weight = (torch.randn(dim, generator=gen).to(dtype) for _ in range(2))
    slots = torch.tensor([7, 2, 9, 0, 4])
    k_cache, v_cache = torch.zeros(12, kv_heads, dim, dtype=dtype), torch.zeros(12, kv_heads, dim, dtype=dtype)
    q, k, v = qkv.view(tokens, heads + 2 * kv_heads, dim).split([heads, kv_heads, kv_heads], 1)
    if norms:
        q, k = model_rms_norm(q, q_weight, 1e-6), model_rms_norm(k, k_weight, 1e-6)
    c, s = cos[:, None], sin[:, None]
    q, k = q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s
    v = v.clone()
    weights = (q_weight, k_weight) if norms else (None, None)
    cpu_ops.rope_and_cache(qkv, cos, sin, *weights, 1e-6, slots, k_cache, v_cache, heads)
    rotated = qkv.view(tokens, heads + 2 * kv_heads, dim)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(rotated[:, :heads], q, rtol=tol, atol=tol)
    torch.testing.assert_close(rotated[:, heads : heads + kv_heads], k, rtol=tol, atol=tol)
    torch.testing.assert_close(k_cache[slots], rotated[:, heads : heads + kv_heads], rtol=0, atol=0)
    torch.testing.assert_close(v_cache[slots], v, rtol=0, atol=0)
    untouched = torch.ones(12, dtype=torch.bool)
    untouched[slots] = False
    assert not k_cache[untouched].any() and not v_cache[untouched].any()


@DTYPES
def test_add_rms_norm_matches_the_model_ops(form: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    residual, delta = (torch.randn(3, 2, 16, generator=gen).to(dtype) for _ in range(2))
    weight = torch.randn(16, generator=gen).to(dtype)
    total, normed = cpu_ops.add_rms_norm(residual, delta, weight, 1e-6)
    torch.testing.assert_close(total, residual + delta, rtol=0, atol=0)
    # The same roundings as the model's norm: within one rounding of a different order of the sum of squares.
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(normed, model_rms_norm(residual + delta, weight, 1e-6), rtol=tol, atol=tol)
    # A strided input is read as it is laid out
    total, normed = cpu_ops.add_rms_norm(residual.transpose(0, 1), delta.transpose(0, 1), weight, 1e-6)
    torch.testing.assert_close(total, (residual + delta).transpose(0, 1), rtol=0, atol=0)


def test_a_kernel_whose_threads_fail_runs_on_the_calling_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = numba_support.Kernel(lambda x: x + 1)
    calls: list[str] = []

    def failing(*args):  # noqa: ANN002, ANN202
        raise ValueError("No threading layer could be loaded.")

    monkeypatch.setattr(kernel, "parallel", failing)
    monkeypatch.setattr(kernel, "alone", lambda x: calls.append("alone") or x + 1)
    assert kernel.warm(np.float32(1.0)) == 2.0
    assert not kernel.threads
    assert kernel(2**40, np.float32(1.0)) == 2.0
    assert calls == ["alone", "alone"]


def test_numbas_workqueue_layer_leaves_kernels_on_the_calling_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = numba_support.Kernel(lambda x: x + 1)
    monkeypatch.setattr(numba_support.numba, "threading_layer", lambda: "workqueue")
    kernel.warm(np.float32(1.0))
    assert not kernel.threads
    monkeypatch.setattr(numba_support.numba, "threading_layer", lambda: "omp")
    kernel.warm(np.float32(1.0))
    assert kernel.threads


def test_kernels_that_cannot_compile_leave_pytorch_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args):  # noqa: ANN002, ANN202
        raise RuntimeError("cannot compile")

    monkeypatch.setattr(numba_support.Kernel, "warm", failing)
    cpu_ops._compiled.cache_clear()  # noqa: SLF001
    try:
        assert not cpu_ops.available(torch.float32)
    finally:
        monkeypatch.undo()
        cpu_ops._compiled.cache_clear()  # noqa: SLF001
    assert cpu_ops.available(torch.float32)


def test_exp_is_within_a_few_ulp_and_clamps_outside_float32s_normal_range() -> None:
    exp = numba_support.exp

    @numba.njit(fastmath=numba_support.FASTMATH)  # as the kernels compile it: reassociation must not undo its two-part ln 2
    def each(values, out):  # noqa: ANN001, ANN202
        for i in range(values.size):
            out[i] = exp(values[i])

    x = np.linspace(-87.3, 88.3, 400001, dtype=np.float32)
    got = np.empty_like(x)
    each(x, got)
    exact = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - exact) / exact) < 4 * 2.0**-24
    edges = np.array([-1e30, -100.0, 100.0, 1e30], np.float32)
    out = np.empty_like(edges)
    each(edges, out)
    assert out[0] == out[1] == 0.0 and np.isfinite(out[2:]).all() and (out[2:] > 2e38).all()


@DTYPES
def test_silu_mul_matches_the_model_ops(form: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    gate_up = (4 * torch.randn(3, 2, 2 * 24, generator=gen)).to(dtype)
    gate, up = gate_up.split(24, -1)
    expected = F.silu(gate) * up  # the model's ops: the activation rounded, then the product
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(cpu_ops.silu_mul(gate_up), expected, rtol=tol, atol=tol)


def test_an_edit_of_a_helper_reaches_the_cached_kernels_that_inline_it(tmp_path: Path) -> None:
    # Numba checks a cached kernel against its own file only: without names that follow every kernel
    # source, a kernel inlining ``exp`` from another file kept running the old ``exp`` after an edit.
    package = tmp_path / "llm_middleware"
    kernels = package / "engine" / "kernels" / "cpu"
    kernels.mkdir(parents=True)
    for folder in (package, package / "engine", package / "engine" / "kernels"):
        (folder / "__init__.py").write_text("")
    for source in Path(numba_support.__file__).parent.glob("*.py"):
        (kernels / source.name).write_text(source.read_text())
    softmax = ("import numpy as np; from llm_middleware.engine.kernels.cpu import paged_decode; "
               "s = np.array([[[0.0, -1.0, -2.0]]], np.float32); "
               "paged_decode._softmax.alone(s, np.array([3]), 0, np.empty(0, np.float32)); "
               "print(round(float(s[0, 0, 0]), 4))")

    def run() -> str:
        env = {**os.environ, "PYTHONPATH": str(tmp_path), "NUMBA_CACHE_DIR": ""}
        done = subprocess.run([sys.executable, "-c", softmax], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    assert run() == "0.6652"  # e^0 / (e^0 + e^-1 + e^-2), compiled and cached
    support = kernels / "numba_support.py"
    support.write_text(support.read_text().replace("x = min(max(x,", "x = np.float32(0.0) * min(max(x,", 1))
    assert run() == "0.3333"  # every exp now 1: the cached softmax was compiled again with it



def _error(got: torch.Tensor, exact: torch.Tensor) -> float:
    """Root-mean-square error against a float64 result, relative to that result's own size."""
    return float(((got.double() - exact) ** 2).mean().sqrt() / (exact**2).mean().sqrt())


def test_kernels_on_large_activations_are_within_pytorchs_own_float32_error(form: str) -> None:
    # Real models carry large activations (residuals of thousands, attention scores of tens, gates of
    # tens): each kernel, under its own fast-math flags, must stay as close to float64 as PyTorch's ops.
    from llm_middleware.engine.kernels.cpu import paged_decode as cpu_attention

    gen = torch.Generator().manual_seed(4)
    residual, delta = (1000 * torch.randn(64, 1024, generator=gen) for _ in range(2))
    residual[:, 5] *= 30  # an outlier channel
    weight = 0.5 + torch.rand(1024, generator=gen)
    total = residual.double() + delta.double()
    exact = total * torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + 1e-6) * weight.double()
    ours = cpu_ops.add_rms_norm(residual, delta, weight, 1e-6)[1]
    assert _error(ours, exact) <= 1.5 * _error(F.rms_norm(residual + delta, (1024,), weight, 1e-6), exact)

    gate_up = 15 * torch.randn(64, 2 * 512, generator=gen)
    gate, up = gate_up.double().split(512, -1)
    exact = F.silu(gate) * up
    theirs = F.silu(gate_up[:, :512]) * gate_up[:, 512:]
    assert _error(cpu_ops.silu_mul(gate_up), exact) <= 1.5 * _error(theirs, exact)

    rows, heads, kv_heads, dim, bs, n = 16, 8, 2, 64, 16, 300
    blocks = -(-n // bs)
    k_cache = 5 * torch.randn(rows * blocks * bs, kv_heads, dim, generator=gen)  # scores of up to about a hundred
    v_cache = torch.randn(rows * blocks * bs, kv_heads, dim, generator=gen)
    query = 5 * torch.randn(rows, heads * dim, generator=gen)
    tables = torch.randperm(rows * blocks, generator=gen).view(rows, blocks)
    ours = cpu_attention.decode_attention(query, heads, k_cache, v_cache, tables, torch.full((rows,), n), dim**-0.5, bs)
    exact, theirs = [], []
    for row in range(rows):
        slots = tables[row, torch.arange(n) // bs] * bs + torch.arange(n) % bs
        keys, values = (c[slots].transpose(0, 1).repeat_interleave(heads // kv_heads, 0) for c in (k_cache, v_cache))
        q = query[row].view(heads, 1, dim)
        exact.append(torch.softmax(q.double() @ keys.double().transpose(1, 2) * dim**-0.5, -1) @ values.double())
        theirs.append(F.scaled_dot_product_attention(q[None], keys[None], values[None], scale=dim**-0.5)[0])
    exact_t = torch.stack(exact).transpose(1, 2)  # [B, 1, H, D]
    assert _error(ours, exact_t) <= 1.5 * _error(torch.stack(theirs).transpose(1, 2), exact_t)
