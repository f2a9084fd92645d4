"""The CPU layer kernels: results against PyTorch ops, both compiled forms, and what happens where numba fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llm_middleware.engine import cpu_kernels
from llm_middleware.engine.fused_layers import _rotate_half

pytestmark = pytest.mark.skipif(not cpu_kernels.available(torch.float32), reason="needs numba")


@pytest.fixture(params=["calling-thread", "numba-threads"])
def form(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(cpu_kernels, "PARALLEL_WORK", 0 if request.param == "numba-threads" else 2**62)
    return request.param


@pytest.mark.parametrize("norms", [True, False])
def test_rope_and_cache_matches_the_model_ops(form: str, norms: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    tokens, heads, kv_heads, dim = 5, 4, 2, 8
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=gen)
    cos, sin = torch.randn(tokens, dim, generator=gen), torch.randn(tokens, dim, generator=gen)
    q_weight, k_weight = torch.randn(dim, generator=gen), torch.randn(dim, generator=gen)
    slots = torch.tensor([7, 2, 9, 0, 4])
    k_cache, v_cache = torch.zeros(12, kv_heads, dim), torch.zeros(12, kv_heads, dim)
    q, k, v = qkv.view(tokens, heads + 2 * kv_heads, dim).split([heads, kv_heads, kv_heads], 1)
    if norms:
        q, k = F.rms_norm(q, (dim,), q_weight, 1e-6), F.rms_norm(k, (dim,), k_weight, 1e-6)
    c, s = cos[:, None], sin[:, None]
    q, k = q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s
    v = v.clone()
    weights = (q_weight, k_weight) if norms else (None, None)
    cpu_kernels.rope_and_cache(qkv, cos, sin, *weights, 1e-6, slots, k_cache, v_cache, heads)
    rotated = qkv.view(tokens, heads + 2 * kv_heads, dim)
    torch.testing.assert_close(rotated[:, :heads], q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rotated[:, heads : heads + kv_heads], k, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_cache[slots], k, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v_cache[slots], v, rtol=0, atol=0)
    untouched = torch.ones(12, dtype=torch.bool)
    untouched[slots] = False
    assert not k_cache[untouched].any() and not v_cache[untouched].any()


def test_add_rms_norm_matches_the_model_ops(form: str) -> None:
    gen = torch.Generator().manual_seed(1)
    residual, delta = torch.randn(3, 2, 16, generator=gen), torch.randn(3, 2, 16, generator=gen)
    weight = torch.randn(16, generator=gen)
    total, normed = cpu_kernels.add_rms_norm(residual, delta, weight, 1e-6)
    torch.testing.assert_close(total, residual + delta, rtol=0, atol=0)
    torch.testing.assert_close(normed, F.rms_norm(residual + delta, (16,), weight, 1e-6), rtol=1e-5, atol=1e-5)
    # A strided input is read as it is laid out
    total, normed = cpu_kernels.add_rms_norm(residual.transpose(0, 1), delta.transpose(0, 1), weight, 1e-6)
    torch.testing.assert_close(total, (residual + delta).transpose(0, 1), rtol=0, atol=0)


def test_a_kernel_whose_threads_fail_runs_on_the_calling_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = cpu_kernels.Kernel(lambda x: x + 1)
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
    kernel = cpu_kernels.Kernel(lambda x: x + 1)
    monkeypatch.setattr(cpu_kernels.numba, "threading_layer", lambda: "workqueue")
    kernel.warm(np.float32(1.0))
    assert not kernel.threads
    monkeypatch.setattr(cpu_kernels.numba, "threading_layer", lambda: "omp")
    kernel.warm(np.float32(1.0))
    assert kernel.threads


def test_kernels_that_cannot_compile_leave_pytorch_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args):  # noqa: ANN002, ANN202
        raise RuntimeError("cannot compile")

    monkeypatch.setattr(cpu_kernels.Kernel, "warm", failing)
    cpu_kernels._compiled.cache_clear()  # noqa: SLF001
    try:
        assert not cpu_kernels.available(torch.float32)
    finally:
        monkeypatch.undo()
        cpu_kernels._compiled.cache_clear()  # noqa: SLF001
    assert cpu_kernels.available(torch.float32)
