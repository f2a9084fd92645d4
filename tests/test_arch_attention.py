"""Models whose attention has sliding windows, soft-capped scores or sinks, through the engine on the CPU.

Greedy output must equal ``generate``'s past the window (prompts longer than it, and generation
that crosses it) on every CPU path: the one-call decode step, the numba kernels under the model's
modules, and attention through gathered blocks; prompts in chunks and whole, several rows a step.
Each feature is shown to change the reference's output, so an engine that ignored it would fail.
Models whose attention the engine does not compute are refused when they load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from arch_models import ABLATIONS, ARCHS, UNSUPPORTED, WINDOW, build_unsupported_model, greedy, load_reference
from engine_state import default_worker
from llm_middleware import errors
from llm_middleware.engine import Engine
from llm_middleware.engine.kernels.cpu import row_ops as cpu_ops
from llm_middleware.engine.attention.paged import ATTENTION_NAME
from llm_middleware.engine.model.attention_features import UnsupportedAttentionError, read_variants
from llm_middleware.engine.model.cpu_decoder import CpuDecoder

TEXT = "The quick brown fox jumps over the lazy dog, and then it jumps again over the other dog"
NEW_TOKENS = 32
# Within the window (generation crosses it), over two windows, just over one.
PROMPT_LENGTHS = (8, 42, 20)

_references: dict[str, list[list[int]]] = {}


def prompts_of(model_dir: Path) -> list[list[int]]:
    ids = AutoTokenizer.from_pretrained(model_dir).encode(TEXT, add_special_tokens=False)
    assert len(ids) >= max(PROMPT_LENGTHS)
    return [ids[:n] for n in PROMPT_LENGTHS]


def references(arch: str, model_dir: Path) -> list[list[int]]:
    """``generate``'s greedy tokens after each prompt (computed once a session)."""
    if arch not in _references:
        model = load_reference(model_dir)
        _references[arch] = [greedy(model, ids, NEW_TOKENS) for ids in prompts_of(model_dir)]
    return _references[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_each_feature_changes_the_greedy_output(arch: str, arch_model_dir: Callable[[str], Path]) -> None:
    model_dir = arch_model_dir(arch)
    prompts, expected = prompts_of(model_dir), references(arch, model_dir)
    assert len(prompts[0]) + NEW_TOKENS > WINDOW and len(prompts[1]) > 2 * WINDOW
    for feature, ablate in ABLATIONS[arch].items():
        model = ablate(model_dir)
        if feature == "sliding window":  # both where generation crosses the window and where the prompt does
            assert all(greedy(model, ids, NEW_TOKENS) != want for ids, want in zip(prompts[:2], expected[:2]))
        else:
            assert any(greedy(model, ids, NEW_TOKENS) != want for ids, want in zip(prompts, expected)), feature


@pytest.mark.parametrize("mode", ["one-call", "kernels", "gather"])
@pytest.mark.parametrize("arch", ARCHS)
async def test_greedy_equals_generate_past_the_window(arch: str, mode: str,
                                                      arch_model_dir: Callable[[str], Path]) -> None:
    # Prompts in chunks of 8 tokens while other rows decode; decode steps as one numba call where
    # the model's layers allow it ("one-call": Mistral's), through the model's modules with the
    # numba kernels ("kernels"), or attending through gathered blocks ("gather").
    model_dir = arch_model_dir(arch)
    eng = Engine(model_dir, seed=0, max_prefill_tokens=8, max_batch_size=4)
    try:
        await eng.wait_ready()
        worker = default_worker(eng)
        runner = worker.runner
        assert runner.cpu_kernels == cpu_ops.available(torch.float32)  # they reproduced windows, caps and sinks
        decoder = CpuDecoder.build(worker.model, worker.kv_cache)
        assert (decoder is not None) == (arch == "mistral" and cpu_ops.parallel())
        decoder_steps: list[int] = []
        if decoder is not None and mode == "one-call":
            decoder.max_rows = 4
            run_decoder = decoder.run
            decoder.run = lambda *args: decoder_steps.append(len(args[0])) or run_decoder(*args)
        runner.cpu_decoder = decoder if mode == "one-call" else None
        runner.cpu_kernels = runner.cpu_kernels and mode != "gather"

        async def run(i: int, ids: list[int]) -> list[int]:
            await asyncio.sleep(0.01 * i)  # arrive while earlier requests are mid-decode
            done = await eng.complete(ids, max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
            return done.choices[0].token_ids

        got = await asyncio.gather(*(run(i, ids) for i, ids in enumerate(prompts_of(model_dir))))
    finally:
        eng.shutdown()
    assert got == references(arch, model_dir)
    assert bool(decoder_steps) == (runner.cpu_decoder is not None)


@pytest.mark.parametrize("arch", ARCHS)
async def test_equal_prompts_prefilled_whole_past_the_window(arch: str, arch_model_dir: Callable[[str], Path]) -> None:
    # Fresh prompts of one length longer than the window, prefilled together in one step: the
    # attention over the new tokens alone, windowed within the prompt.
    model_dir = arch_model_dir(arch)
    ids = prompts_of(model_dir)[1]
    prompts = [ids[:40], ids[2:42]]
    eng = Engine(model_dir, seed=0)
    prefills: list[list[int]] = []
    try:
        await eng.wait_ready()
        default_worker(eng).before_step = lambda batch: prefills.append([n for _, n in batch.prefill])
        got = await asyncio.gather(*(eng.complete(p, max_tokens=8, temperature=0, ignore_eos=True) for p in prompts))
    finally:
        eng.shutdown()
    assert prefills[0] == [40, 40]
    model = load_reference(model_dir)
    assert [done.choices[0].token_ids for done in got] == [greedy(model, p, 8) for p in prompts]


@pytest.mark.parametrize("kind", sorted(UNSUPPORTED))
def test_models_whose_attention_is_not_computed_are_refused_at_load(kind: str, tmp_path: Path) -> None:
    eng = Engine(build_unsupported_model(tmp_path, kind))
    try:
        with pytest.raises(errors.EngineNotReadyError, match="failed to load"):
            eng.wait_ready_sync()
        assert eng.state == "failed"
        assert "does not compute the attention" in eng.error
        assert UNSUPPORTED[kind] in eng.error
    finally:
        eng.shutdown()


def test_an_attention_argument_the_engine_ignores_is_refused(arch_model_dir: Callable[[str], Path]) -> None:
    # Whatever a layer hands the attention function beyond what the engine computes refuses the model.
    model = AutoModelForCausalLM.from_pretrained(arch_model_dir("mistral"), attn_implementation=ATTENTION_NAME)
    assert {layer: v.window for layer, v in read_variants(model).items()} == {0: WINDOW, 1: WINDOW}
    attention = model.model.layers[1].self_attn
    base = type(attention)

    class BiasedAttention(base):  # type: ignore[misc, valid-type]
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return base.forward(self, *args, position_bias=torch.zeros(4), **kwargs)

    attention.__class__ = BiasedAttention
    with pytest.raises(UnsupportedAttentionError, match=r"the attention argument 'position_bias' \(layers 1\)"):
        read_variants(model)
