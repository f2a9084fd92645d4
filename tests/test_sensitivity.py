"""The test models' greedy output depends on the context, so greedy-equality tests can fail; and the engine's
float32 kernels keep greedy output equal to a float64 reference on models whose activations are large.

Random weights at transformers' default scale give a model that repeats one token whatever came before
it: every "greedy output equals ``generate``" test would then pass with a broken attention, KV cache or
prompt chunking.  The mutation check below breaks the engine's decode attention on purpose (a masked
token, a window, a wrong block) and asserts that the equality with ``generate`` then fails.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine_state import default_worker
from llm_middleware.demo_model import build_demo_model
from llm_middleware.engine import Engine
from llm_middleware.engine.kernels.cpu import paged_decode as cpu_attention
from llm_middleware.engine.kernels.cpu import row_ops as cpu_ops
from llm_middleware.engine.model.cpu_decoder import CpuDecoder

PROMPTS = [
    "Hello",
    "The quick brown fox jumps over the lazy dog, and then it jumps again over the other dog",
    "东京 🚀 café",
    "def add(a, b):\n    return a + b\n# and now subtract: def sub(a, b):",
]
TOKENS = 24


@functools.cache
def _generate(model_dir: Path, prompt: str, n: int, dtype: torch.dtype = torch.float32) -> tuple[int, ...]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    ids = tok.encode(prompt, add_special_tokens=False)
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return tuple(out[0, len(ids):].tolist())


@pytest.mark.parametrize("arch_fixture", ["tiny_model_dir", "tiny_llama_dir"])
def test_greedy_output_follows_the_context(arch_fixture: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(arch_fixture)
    outputs = [_generate(model_dir, prompt, TOKENS) for prompt in PROMPTS]
    assert all(len(set(out)) > TOKENS // 2 for out in outputs)  # no token repeated over and over
    # One early word changed: the continuation changes at once, though the prompt's end is the same.
    changed = _generate(model_dir, PROMPTS[1].replace("quick", "slow"), TOKENS)
    assert changed[:4] != outputs[1][:4]


# ---- the mutation check -----------------------------------------------------------------------------

Keep = Callable[[int], torch.Tensor]  # a row's context length -> the positions its new token attends to


def _decode_attention_over(keep: Keep, shift_block: bool = False) -> Callable[..., torch.Tensor]:
    """A stand-in for ``cpu_attention.decode_attention`` in PyTorch ops: each row's new query attends to
    the positions ``keep`` gives (all of them: the real thing); ``shift_block`` reads each row's first
    block from the wrong place (a broken block table)."""

    def attention(rows: torch.Tensor, heads: int, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float, block_size: int,
                  **variant: object) -> torch.Tensor:
        assert not any(v is not None for v in variant.values())  # the test models have no window, cap or sinks
        kv_heads, dim = k_cache.shape[1], k_cache.shape[2]
        out = []
        for row, n in enumerate(context_lens.tolist()):
            table = block_tables[row].clone()
            if shift_block:
                table[0] += 1
            positions = keep(n)
            slots = table[positions // block_size] * block_size + positions % block_size
            keys, values = (c[slots].transpose(0, 1).repeat_interleave(heads // kv_heads, 0) for c in (k_cache, v_cache))
            query = rows[row, : heads * dim].view(heads, 1, dim)  # a fused q/k/v row holds the queries first
            out.append(torch.softmax(query @ keys.transpose(1, 2) * scale, -1) @ values)  # [H, 1, D]
        return torch.stack(out).transpose(1, 2).to(rows.dtype)  # [B, 1, H, D]

    return attention


BROKEN = {
    "first-token-masked": _decode_attention_over(lambda n: torch.arange(1, n)),
    "window-of-8": _decode_attention_over(lambda n: torch.arange(max(0, n - 8), n)),
    "wrong-first-block": _decode_attention_over(torch.arange, shift_block=True),
}


@pytest.fixture(scope="module", params=["tiny_model_dir", "tiny_llama_dir"])
def modules_engine(request: pytest.FixtureRequest) -> Iterator[tuple[Engine, Path]]:
    """An engine whose decode rows attend through ``cpu_attention.decode_attention`` (not the one-call step)."""
    model_dir: Path = request.getfixturevalue(request.param)
    engine = Engine(model_dir, seed=0, max_batch_size=4)
    engine.wait_ready_sync()
    runner = default_worker(engine).runner
    runner.cpu_decoder = None
    yield engine, model_dir
    engine.shutdown()


def _engine_greedy(engine: Engine) -> list[tuple[int, ...]]:
    return [tuple(engine.complete_sync(p, max_tokens=TOKENS, temperature=0, ignore_eos=True).choices[0].token_ids)
            for p in PROMPTS]


@pytest.mark.skipif(not cpu_ops.available(torch.float32), reason="decode rows attend through numba's kernels")
def test_greedy_equality_fails_against_a_broken_attention(modules_engine: tuple[Engine, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    engine, model_dir = modules_engine
    assert default_worker(engine).runner.cpu_kernels
    expected = [_generate(model_dir, p, TOKENS) for p in PROMPTS]
    # The stand-in attending to every position is the real thing: the check passes with it...
    monkeypatch.setattr(cpu_attention, "decode_attention", _decode_attention_over(torch.arange))
    assert _engine_greedy(engine) == expected
    # ...and fails with each broken one, on most prompts.
    for name, broken in BROKEN.items():
        monkeypatch.setattr(cpu_attention, "decode_attention", broken)
        got = _engine_greedy(engine)
        assert sum(g != e for g, e in zip(got, expected)) >= len(PROMPTS) - 1, name


# ---- float32 accuracy ---------------------------------------------------------------------------------

# Large weights (a standard deviation of 0.5 whatever the width) make large activations, as real models
# have: where a kernel loses accuracy, greedy output departs from the float64 reference within tokens.
LARGE_WEIGHTS = [(0, 64), (1, 96), (2, 128), (3, 64)]  # (seed, hidden size)
ACCURACY_TOKENS = 40


@pytest.fixture(scope="module", params=LARGE_WEIGHTS, ids=[f"seed{s}-hidden{h}" for s, h in LARGE_WEIGHTS])
def large_weights_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    seed, hidden = request.param
    return build_demo_model(tmp_path_factory.mktemp("qwen3-large-weights"), arch="qwen3", size="tiny", seed=seed,
                            hidden_size=hidden, initializer_range=0.5)


def test_float32_greedy_output_equals_the_float64_reference(large_weights_dir: Path) -> None:
    expected = [_generate(large_weights_dir, p, ACCURACY_TOKENS, torch.float64) for p in PROMPTS[:2]]
    engine = Engine(large_weights_dir, seed=0, dtype="float32")
    try:
        engine.wait_ready_sync()
        worker = default_worker(engine)
        decoder = CpuDecoder.build(worker.model, worker.kv_cache)
        # Decode steps as one numba call where it runs here, then through the model's modules and the kernels.
        for one_call in ([decoder] if decoder is not None else []) + [None]:
            if one_call is not None:
                one_call.max_rows = 8
            worker.runner.cpu_decoder = one_call
            got = [tuple(engine.complete_sync(p, max_tokens=ACCURACY_TOKENS, temperature=0,
                                              ignore_eos=True).choices[0].token_ids) for p in PROMPTS[:2]]
            assert got == expected, "one-call step" if one_call is not None else "model's modules"
    finally:
        engine.shutdown()
