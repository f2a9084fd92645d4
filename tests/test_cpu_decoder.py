"""The one-call CPU decode step: logits and cache writes against the model's modules, and how the engine picks it."""

from __future__ import annotations

import logging
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from engine_state import default_worker
from llm_middleware.engine import Engine
from llm_middleware.engine.model import cpu_decoder
from llm_middleware.engine.kernels.cpu import numba_support
from llm_middleware.engine.kernels.cpu import row_ops as cpu_ops
from llm_middleware.engine.model.cpu_decoder import CpuDecoder, choose_rows

pytestmark = pytest.mark.skipif(not (cpu_ops.available(torch.float32) and cpu_ops.parallel()),
                                reason="needs numba and its threads")


@pytest.fixture(params=[("tiny_model_dir", "float32"), ("tiny_model_dir", "bfloat16"), ("tiny_llama_dir", "float32"),
                        ("tiny_llama_dir", "bfloat16"), ("mistral", "float32")],
                ids=["qwen3", "qwen3-bf16", "llama", "llama-bf16", "mistral-window"])
def worker(request: pytest.FixtureRequest) -> Any:
    # Mistral's layers see a sliding window of 16 tokens, shorter than the longer probe rows.
    name = request.param[0]
    model_dir: Path = (request.getfixturevalue("arch_model_dir")(name) if name == "mistral"
                       else request.getfixturevalue(name))
    eng = Engine(model_dir, seed=0, block_size=4, dtype=request.param[1])
    eng.wait_ready_sync()
    yield default_worker(eng)
    eng.shutdown()


def probe_rows(worker: Any, lengths: list[int]) -> list[types.SimpleNamespace]:
    """Sequences of random prompts of ``lengths`` tokens, prefilled, each with one token left to compute.

    Their blocks are taken from the end of the cache, in reverse order.
    """
    generator = torch.Generator().manual_seed(1)
    bs, vocab = worker.kv_cache.block_size, worker.model.get_input_embeddings().weight.shape[0]
    top = worker.kv_cache.num_blocks
    rows = []
    for n in lengths:
        blocks = list(range(top - 1, top - 1 - -(-n // bs), -1))
        top -= len(blocks)
        ids = torch.randint(vocab, (n,), generator=generator).tolist()
        rows.append(types.SimpleNamespace(token_ids=ids, num_computed=0, block_table=blocks))
    worker.runner.run([(s, len(s.token_ids) - 1) for s in rows])
    for s in rows:
        s.num_computed = len(s.token_ids) - 1
    return rows


def test_logits_and_cache_writes_match_the_models_step(worker: Any) -> None:
    decoder = CpuDecoder.build(worker.model, worker.kv_cache)
    assert decoder is not None
    rows = probe_rows(worker, [1, 6, 13, 32])  # one token, within a block, across blocks, whole blocks
    cache = worker.kv_cache
    expected = worker.runner.run([(s, 1) for s in rows])
    written = [s.block_table[(len(s.token_ids) - 1) // 4] * 4 + (len(s.token_ids) - 1) % 4 for s in rows]
    expected_k = [k[written].clone() for k in cache.keys]
    for k, v in zip(cache.keys, cache.values):  # the decoder must write the new token's keys and values itself
        k[written] = 0
        v[written] = 0
    got = decoder.run(rows)
    # bfloat16: the same roundings as the model's ops, whose products sum in another order.
    tol = 1e-4 if expected.dtype == torch.float32 else 4 * torch.finfo(torch.bfloat16).eps
    assert got.dtype == expected.dtype
    assert torch.allclose(got.float(), expected.float(), rtol=tol, atol=tol * float(expected.float().abs().mean()))
    for k, e in zip(cache.keys, expected_k):
        assert torch.allclose(k[written].float(), e.float(), rtol=tol / 10, atol=tol / 10)
    assert all(float(v[written].abs().sum()) > 0 for v in cache.values)


def test_pending_tokens_come_from_the_previous_draws(worker: Any) -> None:
    decoder = CpuDecoder.build(worker.model, worker.kv_cache)
    rows = probe_rows(worker, [5, 9])
    known = decoder.run(rows)
    last = [s.token_ids[-1] for s in rows]
    for s in rows:
        s.token_ids[-1] = -1  # not read yet
    draws = torch.tensor([7, last[1], last[0]])
    assert torch.equal(decoder.run(rows, draws, [2, 1]), known)


def test_engine_serves_the_sizes_it_measured_faster(worker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = CpuDecoder.build(worker.model, worker.kv_cache)
    # Timings alternate: the model's step, then the decoder's; the decoder wins at 1, 2 and 4 rows and loses at 8.
    times = iter([2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 1.0, 2.0, 1.0, 0.5])
    monkeypatch.setattr(cpu_decoder, "_median_time", lambda step: next(times))
    assert choose_rows(decoder, worker.runner, max_rows=16) == 4
    assert decoder.max_rows == 4
    assert next(times) == 1.0  # 16 rows were not tried after 8 lost
    assert all(float(k.abs().sum()) == 0 for k in worker.kv_cache.keys)  # the probe's blocks are cleared


def test_a_decoder_that_disagrees_is_not_used(worker: Any, caplog: pytest.LogCaptureFixture) -> None:
    decoder = CpuDecoder.build(worker.model, worker.kv_cache)
    decoder.parts["final_w"] = numba_support.numpy_of(worker.model.model.norm.weight.detach() * 1.5)
    with caplog.at_level(logging.WARNING, "llm_middleware"):
        assert choose_rows(decoder, worker.runner, max_rows=8) == 0
    assert "disagrees" in caplog.text
    assert decoder.max_rows == 0


def test_layers_it_does_not_compute_keep_the_models_step(worker: Any) -> None:
    mlp = vars(worker.model.model.layers[0].mlp)["forward"]
    mlp.project.bias = torch.zeros(mlp.weight.shape[0])
    try:
        assert CpuDecoder.build(worker.model, worker.kv_cache) is None
    finally:
        mlp.project.bias = None


def test_the_engine_routes_batches_up_to_max_rows(worker: Any) -> None:
    decoder = CpuDecoder.build(worker.model, worker.kv_cache)
    decoder.max_rows = 2
    calls = []
    run = decoder.run
    decoder.run = lambda seqs, *args: calls.append(len(seqs)) or run(seqs, *args)
    worker.runner.cpu_decoder = decoder
    rows = probe_rows(worker, [3, 4, 5])
    worker.runner.decode(rows[:2])
    worker.runner.decode(rows)
    assert calls == [2]
