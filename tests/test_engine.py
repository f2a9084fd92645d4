"""The engine end to end on tiny random-weight models: exactness, sampling, stops, cancellation, load."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from typing import Any
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine_state import StepLog, default_worker, first_step, idle_stats, kv_accounting
from llm_middleware import errors
from llm_middleware.engine import Engine
from llm_middleware.engine.kernels.cpu import row_ops as cpu_ops
from llm_middleware.engine.model.cpu_decoder import CpuDecoder
from llm_middleware.engine.model.footprint import weight_bytes
from llm_middleware.engine.scheduling.sequence import PENDING_TOKEN

PROMPTS = [
    "Hello",
    "The quick brown fox jumps over the lazy dog, and then it jumps again over the other dog",
    "东京 🚀 café",
    "def add(a, b):\n    return a + b\n# and now subtract: def sub(a, b):",
]


#: Each step read on the host before the next is launched, or launched from the previous step's
#: draws still on the device (the CUDA default, forced here on the CPU).
MODES = pytest.mark.parametrize("overlap", [False, True], ids=["sync", "overlap"])


@pytest.fixture(scope="module", params=[False, True], ids=["sync", "overlap"])
def engine(tiny_model_dir: Path, request: pytest.FixtureRequest):
    # A small prefill budget forces long prompts through several chunks.
    eng = Engine(tiny_model_dir, seed=0, max_prefill_tokens=8, max_batch_size=8, async_scheduling=request.param)
    eng.wait_ready_sync()
    yield eng
    eng.shutdown()


def reference_greedy(model_dir: Path, prompt: str, n: int) -> list[int]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tok.encode(prompt, add_special_tokens=False)
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("mode", ["sync", "overlap", "overlap-prompts", "modules", "gather"])
@pytest.mark.parametrize("arch_fixture", ["tiny_model_dir", "tiny_llama_dir"])
async def test_greedy_equals_generate_for_staggered_batch(arch_fixture: str, mode: str,
                                                          request: pytest.FixtureRequest) -> None:
    # Decode steps run as one numba call (where numba's threads run) except in "modules": through
    # the model's modules with the CPU kernels, and "gather": attending through gathered blocks.
    model_dir: Path = request.getfixturevalue(arch_fixture)
    overlap = mode not in ("sync", "modules", "gather")
    eng = Engine(model_dir, max_prefill_tokens=8, seed=0, async_scheduling=overlap)
    launched_ahead: list[bool] = []  # per step: did a row's input come from draws the host had not read?
    chunks_ahead: list[bool] = []  # per step with a prompt chunk: the same
    try:
        await eng.wait_ready()
        worker = default_worker(eng)
        # Prompt chunks are queued ahead only where the device runs asynchronously (CUDA); the
        # order of the host's work is the same here, on the engine's thread.
        worker.pipelining.prompts = mode == "overlap-prompts"
        assert worker.runner.cpu_kernels == cpu_ops.available(torch.float32)
        worker.runner.cpu_kernels = worker.runner.cpu_kernels and mode != "gather"
        # Whether the one-call step won the start-up timing is the machine's business: here it serves
        # every batch where it can run, and none in the other modes.
        decoder = CpuDecoder.build(worker.model, worker.kv_cache)
        assert (decoder is not None) == cpu_ops.parallel()
        decoder_steps = []
        if decoder is not None:
            decoder.max_rows = 8
            run_decoder = decoder.run
            decoder.run = lambda *args: decoder_steps.append(len(args[0])) or run_decoder(*args)
        worker.runner.cpu_decoder = decoder if mode not in ("modules", "gather") else None

        def before_step(batch: Any) -> None:
            ahead = any(s.token_ids[-1] == PENDING_TOKEN for s in batch.decode)
            launched_ahead.append(ahead)
            if batch.prefill:
                chunks_ahead.append(ahead)

        worker.before_step = before_step

        async def run(i: int, prompt: str) -> list[int]:
            await asyncio.sleep(0.005 * i)  # arrive while earlier requests are mid-decode
            done = await eng.complete(prompt, max_tokens=24, temperature=0, ignore_eos=True)
            return done.choices[0].token_ids

        got = await asyncio.gather(*(run(i, p) for i, p in enumerate(PROMPTS)))
        for prompt, tokens in zip(PROMPTS, got):
            assert tokens == reference_greedy(model_dir, prompt, 24), prompt
        assert any(launched_ahead) == overlap
        assert any(chunks_ahead) == (mode == "overlap-prompts")
        assert bool(decoder_steps) == (worker.runner.cpu_decoder is not None)
    finally:
        eng.shutdown()


async def test_seeded_sampling_reproducible_while_sharing_batch(engine: Engine) -> None:
    messages = [{"role": "user", "content": "tell me a story"}]
    alone = await engine.chat(messages, max_tokens=16, temperature=1.0, seed=1234, ignore_eos=True)

    async def noise(i: int) -> None:
        await engine.complete(PROMPTS[i % len(PROMPTS)], max_tokens=20, temperature=1.0, ignore_eos=True)

    crowd = [asyncio.create_task(noise(i)) for i in range(5)]
    shared = await engine.chat(messages, max_tokens=16, temperature=1.0, seed=1234, ignore_eos=True)
    await asyncio.gather(*crowd)
    other = await engine.chat(messages, max_tokens=16, temperature=1.0, seed=99, ignore_eos=True)
    assert shared.choices[0].token_ids == alone.choices[0].token_ids
    assert other.choices[0].token_ids != alone.choices[0].token_ids


async def test_n_choices_differ_and_usage_counts_all(engine: Engine) -> None:
    done = await engine.complete("Hello", max_tokens=6, n=3, temperature=1.0, seed=5, ignore_eos=True)
    assert [c.index for c in done.choices] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in done.choices}) > 1
    assert done.usage.completion_tokens == 18
    assert done.usage.prompt_tokens == len(engine.tokenize("Hello"))


def test_stop_string_split_across_tokens_is_never_emitted(engine: Engine) -> None:
    full = engine.complete_sync(PROMPTS[1], max_tokens=30, temperature=0, ignore_eos=True)
    text = full.text
    # Pick a stop string that spans a token boundary of the greedy output.
    pieces = [engine.detokenize([t]) for t in full.choices[0].token_ids]
    boundary = len(pieces[0]) + len(pieces[1])
    stop = text[boundary - 2 : boundary + 2]
    assert len(stop) == 4
    deltas = list(engine.stream_complete_sync(PROMPTS[1], max_tokens=30, temperature=0, ignore_eos=True, stop=[stop]))
    streamed = "".join(d.text for d in deltas)
    assert streamed == text[: text.index(stop)]
    assert stop not in streamed
    assert deltas[-1].finish_reason == "stop"


class _PythonOnlyTokenizer:
    """A tokenizer without a Rust backend: only ``decode``."""

    def __init__(self, tokenizer: object) -> None:
        self.decode = tokenizer.decode  # type: ignore[attr-defined]


@pytest.mark.parametrize("rust_backend", [True, False])
def test_utf8_never_broken_across_deltas(engine: Engine, rust_backend: bool) -> None:
    from llm_middleware.engine.text.detokenizer import IncrementalDetokenizer, TokenDecoder

    tokenizer = default_worker(engine).tokenizer
    decoder = TokenDecoder(tokenizer if rust_backend else _PythonOnlyTokenizer(tokenizer))
    text = "东京 🚀 café — ok 👍🏽"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text) // 2  # multi-byte characters are split over several tokens
    for cut in (0, 3):  # with no context, and continuing after a prompt
        context = tokenizer.decode(ids[:cut], skip_special_tokens=True)
        detok = IncrementalDetokenizer(decoder, ids[:cut], [])
        chunks = []
        for token in ids[cut:]:
            detok.add(token)
            chunks.append(detok.take(final=False))
        assert context + "".join(chunks) == text
        assert all("\ufffd" not in c for c in chunks)
    # Streamed output of the engine joins to the decoding of all its tokens (tool-call and thinking
    # markers kept, other special tokens left out).
    for seed in range(3):
        deltas = list(engine.stream_complete_sync(text, max_tokens=30, temperature=1.0, seed=seed))
        all_ids = [t for d in deltas for t in d.token_ids]
        assert "".join(d.text for d in deltas) == TokenDecoder(tokenizer).decode(all_ids)



@pytest.mark.parametrize("rust_backend", [True, False])
def test_bytes_that_never_form_a_character_are_released(engine: Engine, rust_backend: bool) -> None:
    from llm_middleware.engine.text.detokenizer import IncrementalDetokenizer, TokenDecoder
    from llm_middleware.engine.text.token_bytes import _byte_level_alphabet

    tokenizer = default_worker(engine).tokenizer
    decoder = TokenDecoder(tokenizer if rust_backend else _PythonOnlyTokenizer(tokenizer))
    char_of = {b: c for c, b in _byte_level_alphabet().items()}
    continuation = tokenizer.convert_tokens_to_ids(char_of[0x80])  # a UTF-8 continuation byte alone
    ids = [continuation] * 12
    detok = IncrementalDetokenizer(decoder, tokenizer.encode("Hi", add_special_tokens=False), [])
    released = []
    for token in ids:
        detok.add(token)
        released.append(detok.take(final=False))
    assert released[3] == "" and "".join(released[:6]) != ""  # held while a character may still form
    last = continuation
    detok.add(last)
    whole = "".join(released) + detok.take(final=True)
    assert whole == tokenizer.decode([*ids, last], skip_special_tokens=True)
    assert set(whole) == {"\ufffd"}


def test_stop_token_ids_and_min_tokens(engine: Engine) -> None:
    first = engine.complete_sync("Hello", max_tokens=10, temperature=0, ignore_eos=True).choices[0].token_ids
    stopped = engine.complete_sync("Hello", max_tokens=10, temperature=0, stop_token_ids=[first[2]])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].token_ids == first[: first.index(first[2]) + 1]
    forced = engine.complete_sync("Hello", max_tokens=10, temperature=0, stop_token_ids=[first[0]], min_tokens=4)
    assert len(forced.choices[0].token_ids) >= 4


def test_logprobs_and_top_logprobs(engine: Engine) -> None:
    done = engine.complete_sync("Hello", max_tokens=4, temperature=0, logprobs=True, top_logprobs=3, ignore_eos=True)
    lps = done.choices[0].logprobs
    assert lps is not None and len(lps) == 4
    for entry, token in zip(lps, done.choices[0].token_ids):
        assert entry.token_id == token
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token_id == token  # greedy picks the most likely
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert entry.logprob <= 0


def test_sampling_filters_restrict_choices(engine: Engine) -> None:
    greedy = engine.complete_sync("Hello", max_tokens=8, temperature=0, ignore_eos=True).choices[0].token_ids
    topk1 = engine.complete_sync("Hello", max_tokens=8, temperature=1.5, top_k=1, seed=3, ignore_eos=True)
    assert topk1.choices[0].token_ids == greedy
    tiny_p = engine.complete_sync("Hello", max_tokens=8, temperature=1.5, top_p=1e-6, seed=3, ignore_eos=True)
    assert tiny_p.choices[0].token_ids == greedy
    banned = engine.complete_sync(
        "Hello", max_tokens=1, temperature=0, ignore_eos=True, logit_bias={greedy[0]: -100.0}
    )
    assert banned.choices[0].token_ids[0] != greedy[0]
    no_repeat = engine.complete_sync("Hello", max_tokens=8, temperature=0, ignore_eos=True, repetition_penalty=10.0)
    assert no_repeat.choices[0].token_ids != greedy


def test_max_tokens_and_eos(engine: Engine) -> None:
    done = engine.complete_sync("Hello", max_tokens=3, temperature=0, ignore_eos=True)
    assert done.choices[0].finish_reason == "length"
    assert done.usage.completion_tokens == 3
    eos = default_worker(engine).eos_ids[0]
    forced = engine.complete_sync("Hello", max_tokens=5, temperature=0, logit_bias={eos: 100.0})
    assert forced.choices[0].finish_reason == "stop"
    assert forced.choices[0].token_ids == [eos]
    assert forced.text == ""


@MODES
async def test_cancellation_frees_slot_and_kv(tiny_model_dir: Path, overlap: bool) -> None:
    eng = Engine(tiny_model_dir, max_batch_size=1, seed=0, async_scheduling=overlap)
    await eng.wait_ready()
    try:
        total = eng.stats()["total_kv_blocks"]
        with StepLog(default_worker(eng)) as log:
            stream = eng.stream_complete("Hello", ignore_eos=True, request_id="long")
            async for _ in stream:
                break
            assert eng.stats()["running"] == 1
            await stream.aclose()
            # The one slot is free again: a later request runs to completion.
            done = await asyncio.wait_for(eng.complete("Hi", max_tokens=3, ignore_eos=True), timeout=60)
        assert done.usage.completion_tokens == 3
        assert log.steps_after_abort("long") in (0, 1)  # it left the batch, rather than ran to its end
        assert kv_accounting(eng.stats()) == {"running": 0, "waiting": 0, "free_kv_blocks": total, "total_kv_blocks": total}
    finally:
        eng.shutdown()


def test_sync_iterator_close_cancels(engine: Engine) -> None:
    total = engine.stats()["total_kv_blocks"]
    with StepLog(default_worker(engine)) as log:
        it = engine.stream_complete_sync("Hello", ignore_eos=True, request_id="closed")
        next(it)
        it.close()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 60  # a hang guard: the step log tells whether it was cancelled
        while engine.stats()["running"] and time.monotonic() < deadline:
            time.sleep(0.01)
    assert log.steps_after_abort("closed") in (0, 1)
    assert engine.stats()["free_kv_blocks"] == total


async def test_cancelled_task_cancels_request(engine: Engine) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.stream_complete("Hello", ignore_eos=True, request_id="cancelled"):
            started.set()

    with StepLog(default_worker(engine)) as log:
        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = await idle_stats(engine, timeout=60)  # a hang guard: the step log tells whether it was cancelled
    assert log.steps_after_abort("cancelled") in (0, 1)
    assert stats["running"] == 0


async def test_overload_past_max_waiting(tiny_model_dir: Path) -> None:
    eng = Engine(tiny_model_dir, max_batch_size=1, max_waiting=2, seed=0)
    await eng.wait_ready()
    gate = threading.Event()
    default_worker(eng).before_step = lambda batch: gate.wait()
    try:
        async def until(running: int, waiting: int) -> None:
            for _ in range(1000):
                if eng.stats()["running"] == running and eng.stats()["waiting"] == waiting:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"engine never reached running={running} waiting={waiting}: {eng.stats()}")

        tasks = [asyncio.create_task(eng.complete("Hello", max_tokens=2))]
        await until(1, 0)  # held in its step by the gate
        tasks += [asyncio.create_task(eng.complete("Hello", max_tokens=2)) for _ in range(2)]
        await until(1, 2)
        with pytest.raises(errors.EngineOverloadedError) as info:
            await asyncio.wait_for(eng.complete("Hello", max_tokens=2), timeout=10)
        assert info.value.status == 429 and info.value.retry_after
        gate.set()
        await asyncio.gather(*tasks)
    finally:
        gate.set()
        eng.shutdown()


@MODES
def test_context_length_error_before_batch(tiny_model_dir: Path, overlap: bool) -> None:
    eng = Engine(tiny_model_dir, max_model_len=32, async_scheduling=overlap)
    try:
        with pytest.raises(errors.ContextLengthExceededError, match="maximum context length is 32"):
            eng.complete_sync("word " * 100)
        assert eng.stats()["running"] == 0
        # Generation stops at the context limit instead of overrunning it.
        done = eng.complete_sync("Hello", ignore_eos=True, temperature=0)
        assert done.choices[0].finish_reason == "length"
        assert done.usage.total_tokens == 32
    finally:
        eng.shutdown()


def test_long_prompt_prefill_does_not_stall_running_stream(tiny_model_dir: Path) -> None:
    eng = Engine(tiny_model_dir, max_prefill_tokens=4, seed=0)
    eng.wait_ready_sync()
    steps: list[tuple[int, int]] = []
    worker = default_worker(eng)
    long_prompt = " ".join(["jumps over the lazy dog"] * 12)
    long_queued = threading.Event()
    enqueue = worker.enqueue

    def enqueue_and_tell(request: Any) -> Any:
        queued = enqueue(request)
        if len(request.prompt_ids) > 8:
            long_queued.set()
        return queued

    def before_step(batch: Any) -> None:
        # The stream decodes only once the long prompt is queued: on a loaded machine it could
        # otherwise finish before the prompt arrives, and no step would mix the two.
        if batch.decode:
            long_queued.wait(60)
        steps.append((len(batch.decode), sum(n for _, n in batch.prefill)))

    worker.enqueue = enqueue_and_tell
    worker.before_step = before_step
    try:
        stream = eng.stream_complete_sync("Hello", max_tokens=60, ignore_eos=True, temperature=0)
        next(stream)
        done = eng.complete_sync(long_prompt, max_tokens=2, temperature=0, ignore_eos=True)
        list(stream)
        assert done.usage.completion_tokens == 2
        # While the long prompt was prefilled 4 tokens at a time, the stream kept decoding.
        mixed = [s for s in steps if s[0] == 1 and s[1] > 0]
        assert len(mixed) >= 5
        assert max(p for _, p in steps) <= 4
    finally:
        eng.shutdown()


@MODES
def test_preemption_when_kv_cache_is_full(tiny_model_dir: Path, overlap: bool) -> None:
    # 8 blocks of 4 slots: two 24-token generations cannot both fit; one is preempted and recomputed.
    eng = Engine(tiny_model_dir, kv_cache_blocks=8, block_size=4, max_model_len=32, seed=0, async_scheduling=overlap)
    eng.wait_ready_sync()
    try:
        solo = [eng.complete_sync(p, max_tokens=20, temperature=0, ignore_eos=True).choices[0].token_ids
                for p in ("Hello", "Hi there")]
        results: list[list[int]] = [[], []]

        def run(i: int, prompt: str) -> None:
            results[i] = eng.complete_sync(prompt, max_tokens=20, temperature=0, ignore_eos=True).choices[0].token_ids

        preempted: list[int] = []
        worker = default_worker(eng)
        both_in = threading.Event()  # hold the first step until both requests are queued: they must overlap

        def before_step(batch: object) -> None:
            both_in.wait(10)
            preempted.extend(s.seq_id for s in batch.preempted)  # type: ignore[attr-defined]

        worker.before_step = before_step
        threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(("Hello", "Hi there"))]
        for t in threads:
            t.start()
        while eng.stats()["running"] + eng.stats()["waiting"] < 2:
            time.sleep(0.005)
        both_in.set()
        for t in threads:
            t.join(timeout=60)
        assert preempted  # the cache really ran out
        assert results == solo
        assert eng.stats()["free_kv_blocks"] == 8
    finally:
        eng.shutdown()


def test_two_models_at_once(tiny_model_dir: Path, tiny_llama_dir: Path) -> None:
    eng = Engine(tiny_model_dir, name="qwen", seed=0)
    eng.add_model(tiny_llama_dir, name="llama")
    try:
        eng.wait_ready_sync()
        results: dict[str, list[int]] = {}

        def run(name: str) -> None:
            results[name] = eng.chat_sync([{"role": "user", "content": "hi"}], model=name, max_tokens=5,
                                          temperature=0, ignore_eos=True).choices[0].token_ids

        threads = [threading.Thread(target=run, args=(n,)) for n in ("qwen", "llama")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for name, path in (("qwen", tiny_model_dir), ("llama", tiny_llama_dir)):
            prompt = eng.apply_chat_template([{"role": "user", "content": "hi"}], model=name)
            assert results[name] == reference_greedy(path, prompt, 5)
        assert eng.resolve_model("default") == "qwen"
        assert [m.name for m in eng.models()] == ["qwen", "llama"]
        with pytest.raises(errors.ModelNotFoundError, match="available models: qwen, llama"):
            eng.chat_sync([{"role": "user", "content": "hi"}], model="gpt-4")
    finally:
        eng.shutdown()


def test_missing_model_fails_with_its_path_in_engine_error(tmp_path: Path) -> None:
    # The path and the exception are for the host (engine.error, the log); the raised error, which
    # a view may pass on to its client, names the model only.
    eng = Engine(tmp_path / "nowhere")
    with pytest.raises(errors.EngineNotReadyError, match="model 'nowhere' failed to load") as raised:
        eng.wait_ready_sync()
    assert str(tmp_path) not in raised.value.message
    assert eng.state == "failed" and f"{tmp_path / 'nowhere'} does not exist" in (eng.error or "")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    eng2 = Engine(broken)
    with pytest.raises(errors.EngineNotReadyError, match="model 'broken' failed to load"):
        eng2.wait_ready_sync()
    assert str(broken) in (eng2.error or "")


def test_generation_config_defaults_respected(tmp_path: Path) -> None:
    from llm_middleware.demo_model import build_demo_model
    from transformers import GenerationConfig

    path = build_demo_model(tmp_path / "m", size="tiny")
    gen = GenerationConfig.from_pretrained(path)
    gen.do_sample, gen.temperature, gen.top_k = True, 0.7, 5
    gen.save_pretrained(path)
    eng = Engine(path)
    try:
        eng.wait_ready_sync()
        worker = default_worker(eng)
        assert worker.defaults["temperature"] == 0.7 and worker.defaults["top_k"] == 5
        assert set(worker.eos_ids) >= {gen.eos_token_id[0]}
    finally:
        eng.shutdown()


def test_invalid_sampling_rejected(engine: Engine) -> None:
    with pytest.raises(errors.InvalidRequestError) as info:
        engine.complete_sync("Hello", top_p=1.5)
    assert info.value.param == "top_p"
    with pytest.raises(errors.InvalidRequestError):
        engine.complete_sync("Hello", n=0)
    with pytest.raises(errors.InvalidRequestError, match="unknown sampling option"):
        engine.complete_sync("Hello", temprature=0.5)


def test_nf4_loading_generates(tiny_model_dir: Path) -> None:
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    eng = Engine(tiny_model_dir, quantize="nf4", seed=0)
    try:
        eng.wait_ready_sync()
        model = default_worker(eng).model
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
        # Quantized projections keep their own kernels: no merged forward replaces them.
        assert not any("forward" in vars(layer.self_attn) or "forward" in vars(layer.mlp) for layer in model.model.layers)
        done = eng.complete_sync("Hello", max_tokens=5, temperature=0, ignore_eos=True)
        assert done.usage.completion_tokens == 5
        # The packed weights and their scales: less than the float32 weights, more than the packed
        # parameters alone.
        stored = eng.stats()["weight_bytes"]
        parameters = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
        full = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        assert sum(parameters.values()) < stored < weight_bytes(full)
    finally:
        eng.shutdown()


def test_embeddings_rank_paraphrase_above_unrelated(minilm_dir: Path) -> None:
    eng = Engine(minilm_dir, task="embed")
    try:
        out = eng.embed_sync([
            "A man is playing a guitar.",
            "Someone is strumming a guitar.",
            "The stock market fell sharply today.",
        ])
        a, b, c = (torch.tensor(v) for v in out.vectors)
        assert abs(float(a.norm()) - 1.0) < 1e-4
        assert float(a @ b) > float(a @ c) + 0.2
        assert out.prompt_tokens > 0
        short = eng.embed_sync("hello", dimensions=64)
        assert len(short.vectors[0]) == 64
        assert eng.models()[0].task == "embed"
        assert 80 * 2**20 < eng.stats()["weight_bytes"] < 100 * 2**20  # 22.7M float32 parameters
    finally:
        eng.shutdown()


async def test_async_api_from_another_thread_and_loop(engine: Engine) -> None:
    results: list[str] = []

    def other_thread() -> None:
        done = asyncio.run(engine.chat([{"role": "user", "content": "hi"}], max_tokens=4, ignore_eos=True))
        results.append(done.text)

    t = threading.Thread(target=other_thread)
    t.start()
    mine = await engine.chat([{"role": "user", "content": "hi"}], max_tokens=4, ignore_eos=True)
    await asyncio.to_thread(t.join, 60)
    assert results and mine.usage.completion_tokens == 4


def test_guided_json_schema_output_validates(engine: Engine) -> None:
    import json

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"},
                       "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    done = engine.complete_sync("Hello", max_tokens=120, temperature=1.0, seed=0, n=3, guided={"json_schema": schema})
    for choice in done.choices:
        value = json.loads(choice.text)
        assert set(value) == {"name", "age", "tags"}
        assert isinstance(value["age"], int) and len(value["name"]) <= 12 and set(value["tags"]) <= {"a", "b"}
        assert choice.finish_reason == "stop"
    regex = engine.complete_sync("Hello", max_tokens=20, temperature=1.0, seed=1, guided={"regex": "[0-9]{3}-[a-z]{2}"})
    import re

    assert re.fullmatch("[0-9]{3}-[a-z]{2}", regex.text)
    with pytest.raises(errors.InvalidRequestError, match="invalid json_schema"):
        engine.complete_sync("Hello", guided={"json_schema": {"type": "nonsense"}})


async def test_equal_length_prompts_prefilled_together_are_exact(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = tok.encode(PROMPTS[1], add_special_tokens=False)
    prompts = [base[:12], base[3:15], base[6:18]]  # one length: prefilled in one causal batch
    eng = Engine(tiny_model_dir, seed=0)
    try:
        await eng.wait_ready()
        got = await asyncio.gather(*(eng.complete(p, max_tokens=16, temperature=0, ignore_eos=True) for p in prompts))
    finally:
        eng.shutdown()
    for ids, done in zip(prompts, got):
        assert done.choices[0].token_ids == reference_greedy(tiny_model_dir, tok.decode(ids), 16)


def test_chat_template_with_and_without_generation_prompt(engine: Engine) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    bare = engine.apply_chat_template(messages, add_generation_prompt=False)
    prompted = engine.apply_chat_template(messages)
    assert bare == "<|im_start|>user\nhi<|im_end|>\n"
    assert prompted == bare + "<|im_start|>assistant\n"


def test_chat_flattens_messages_as_the_api_does(engine: Engine) -> None:
    parts = [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert engine.apply_chat_template(parts, add_generation_prompt=False) == "<|im_start|>system\na\nb<|im_end|>\n"
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    with pytest.raises(errors.InvalidRequestError) as refused:
        engine.chat_sync(image, max_tokens=1)
    assert refused.value.param == "messages[0].content[0].type"
    bad = [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{not json"}}]}]
    with pytest.raises(errors.InvalidRequestError) as refused:
        engine.chat_sync(bad, max_tokens=1)
    assert refused.value.param == "messages[0].tool_calls[0].function.arguments"


def test_logprob_bytes_rebuild_multibyte_text(engine: Engine) -> None:
    from llm_middleware.engine.text.token_bytes import TokenBytes

    worker = default_worker(engine)
    text = "东京 🚀 café"
    ids = worker.tokenizer.encode(text, add_special_tokens=False)
    to_bytes = TokenBytes(worker.tokenizer)
    assert any("\ufffd" in worker.tokenizer.decode([t]) for t in ids)  # single tokens split characters
    assert b"".join(to_bytes(t) for t in ids) == text.encode("utf-8")
    done = engine.complete_sync(text, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2, ignore_eos=True)
    lps = done.choices[0].logprobs
    assert lps is not None and all(lp.bytes == to_bytes(lp.token_id) for lp in lps)
    assert all(top.bytes == to_bytes(top.token_id) for lp in lps for top in lp.top_logprobs)


def test_max_waiting_zero_admits_requests_that_find_a_free_slot(tiny_model_dir: Path) -> None:
    eng = Engine(tiny_model_dir, max_batch_size=2, max_waiting=0)
    try:
        done = eng.complete_sync("Hello", max_tokens=2)
        assert done.usage.completion_tokens >= 1
        with pytest.raises(errors.InvalidRequestError, match="prompt is empty"):
            eng.complete_sync("")
    finally:
        eng.shutdown()


def test_seed_must_fit_in_64_bits_and_wraps_for_choices(engine: Engine) -> None:
    with pytest.raises(errors.InvalidRequestError) as info:
        engine.complete_sync("Hello", seed=2**64)
    assert info.value.param == "seed"
    done = engine.complete_sync("Hello", seed=2**64 - 1, n=2, max_tokens=3, temperature=1.0, ignore_eos=True)
    assert done.usage.completion_tokens == 6


def test_embedding_jobs_larger_than_the_batch_are_split(minilm_dir: Path) -> None:
    texts = [f"sentence number {i} about guitars" for i in range(5)]
    small = Engine(minilm_dir, task="embed", max_batch_size=2)
    big = Engine(minilm_dir, task="embed", max_batch_size=16)
    try:
        split = small.embed_sync(texts)
        whole = big.embed_sync(texts)
        assert len(split.vectors) == 5 and split.prompt_tokens == whole.prompt_tokens
        for a, b in zip(split.vectors, whole.vectors):
            assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)
        with pytest.raises(errors.ContextLengthExceededError, match="input 1 has"):
            small.embed_sync(["short", "word " * 1000])
    finally:
        small.shutdown()
        big.shutdown()


def test_device_map_loading_places_each_layer_cache_with_its_layer(tiny_model_dir: Path) -> None:
    # Where several GPUs are visible, device_map="auto" spreads the layers; here every layer
    # lands on the CPU, which exercises the same per-layer placement and accelerate's loading.
    eng = Engine(tiny_model_dir, device_map={"": "cpu"}, seed=0)
    try:
        eng.wait_ready_sync()
        worker = default_worker(eng)
        assert [k.device.type for k in worker.kv_cache.keys] == ["cpu"] * len(worker.kv_cache.keys)
        got = eng.complete_sync(PROMPTS[0], max_tokens=8, temperature=0, ignore_eos=True).choices[0].token_ids
        assert got == reference_greedy(tiny_model_dir, PROMPTS[0], 8)
    finally:
        eng.shutdown()


def test_requests_do_not_measure_the_tokenizer_each_time(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # len() of a 150k-token tokenizer costs milliseconds; per request it serialised bursts of arrivals.
    worker = default_worker(engine)

    def no_len(self: object) -> int:
        raise AssertionError("len(tokenizer) on the request path")

    monkeypatch.setattr(type(worker.tokenizer), "__len__", no_len)
    done = engine.complete_sync([1, 2, 3], max_tokens=2, ignore_eos=True)
    assert done.usage.completion_tokens == 2
    assert engine.detokenize([1, 2, 3]) == worker.tokenizer.decode([1, 2, 3])
    with pytest.raises(errors.InvalidRequestError, match="prompt token ids"):
        engine.complete_sync([worker.vocab_size], max_tokens=2)


def test_loaded_model_is_left_out_of_garbage_collections(engine: Engine) -> None:
    # Full collections walked every object alive since start-up (about 0.2 s with the GIL held,
    # a stall of every stream); objects alive once the model is loaded are frozen out of them.
    worker = default_worker(engine)
    tracked = gc.get_objects()  # generations 0-2: what a full collection walks
    assert gc.get_freeze_count() > 0
    assert not any(o is worker.model or o is worker.tokenizer for o in tracked)
    del tracked


@MODES
def test_first_token_is_delivered_before_the_next_prompt_chunk_runs(tiny_model_dir: Path, overlap: bool) -> None:
    # A finished prompt's first token used to wait for the whole next prompt chunk (one long
    # step on a GPU) before reaching its stream.
    eng = Engine(tiny_model_dir, max_prefill_tokens=8, seed=0, async_scheduling=overlap)
    eng.wait_ready_sync()
    worker = default_worker(eng)
    first_launched, first_delta = threading.Event(), threading.Event()
    delivered_before_chunk: list[bool] = []

    def before_step(batch: Any) -> None:
        ids = {s.request.request_id for s, _ in batch.prefill}
        if "a" in ids:
            first_launched.set()
            deadline = time.monotonic() + 10
            while not worker._inbox and time.monotonic() < deadline:  # noqa: SLF001  (b is queued)
                time.sleep(0.005)
        elif "b" in ids:
            delivered_before_chunk.append(first_delta.wait(5))

    worker.before_step = before_step

    async def consume_a() -> None:  # an event-loop reader: its deltas travel in the step's one hand-over
        async for _ in eng.stream_complete(list(range(10, 18)), max_tokens=3, ignore_eos=True, request_id="a"):
            first_delta.set()

    reader = threading.Thread(target=asyncio.run, args=(consume_a(),))
    reader.start()
    try:
        assert first_launched.wait(10)
        eng.complete_sync(list(range(20, 28)), max_tokens=2, ignore_eos=True, request_id="b")
        reader.join(10)
        assert delivered_before_chunk == [True]
    finally:
        first_launched.set()
        eng.shutdown()


@MODES
def test_a_step_already_drawn_is_delivered_at_shutdown(tiny_model_dir: Path, overlap: bool) -> None:
    # The engine stops while its last step runs: the tokens that step drew still reach the caller.
    eng = Engine(tiny_model_dir, seed=0, async_scheduling=overlap)
    eng.wait_ready_sync()
    worker = default_worker(eng)
    worker.before_step = lambda batch: worker.stop()
    try:
        done = eng.complete_sync("Hello", max_tokens=1, ignore_eos=True)
        assert done.choices[0].finish_reason == "length"
        assert done.usage.completion_tokens == 1
    finally:
        eng.shutdown()


def test_prompt_chunk_budget_defaults_by_device(tiny_model_dir: Path) -> None:
    eng = Engine(tiny_model_dir)
    try:
        eng.wait_ready_sync()
        assert default_worker(eng).scheduler.max_prefill_tokens == 512
    finally:
        eng.shutdown()
    with pytest.raises(errors.InvalidRequestError, match="max_prefill_tokens"):
        Engine(tiny_model_dir, max_prefill_tokens=0)


def test_requests_arriving_together_are_prefilled_together(tiny_model_dir: Path) -> None:
    # An idle engine used to start a prompt chunk with the first request of a burst while the
    # rest were still being taken in.  Each arrival comes well within a window of the last (one
    # second); the third fills the prompt chunk, which ends the wait without waiting out a window.
    eng = Engine(tiny_model_dir, seed=0, burst_window_ms=1000, max_prefill_tokens=30)
    eng.wait_ready_sync()
    first_chunk = first_step(eng, lambda batch: len(batch.prefill))
    try:
        threads = []
        for i in range(3):
            thread = threading.Thread(target=eng.complete_sync, args=(list(range(10 + i, 20 + i)),),
                                      kwargs={"max_tokens": 2, "ignore_eos": True})
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(10)
        assert first_chunk == [3]
    finally:
        eng.shutdown()


def test_a_lone_request_waits_one_burst_window_at_most(tiny_model_dir: Path) -> None:
    # Counted in windows of a second: one quiet window ends the wait, where a burst may wait 25.
    eng = Engine(tiny_model_dir, seed=0, burst_window_ms=1000)
    eng.wait_ready_sync()
    launched = first_step(eng, lambda batch: time.monotonic())
    try:
        sent = time.monotonic()
        eng.complete_sync(list(range(10, 20)), max_tokens=1)
        assert launched[0] - sent < 10
    finally:
        eng.shutdown()


@pytest.mark.skipif(not cpu_ops.available(torch.bfloat16), reason="needs numba")
@pytest.mark.parametrize("mode", ["one-call", "modules"])
@pytest.mark.parametrize("arch_fixture", ["tiny_model_dir", "tiny_llama_dir"])
async def test_bfloat16_on_the_cpu_runs_the_kernels_and_keeps_greedy_output(arch_fixture: str, mode: str,
                                                                             request: pytest.FixtureRequest) -> None:
    # The kernels read and write bfloat16 as its bits: norms, rotary and cache writes, decode attention,
    # and the one-call decode step (where numba's threads run).
    model_dir: Path = request.getfixturevalue(arch_fixture)
    eng = Engine(model_dir, max_prefill_tokens=8, seed=0, dtype="bfloat16")
    try:
        await eng.wait_ready()
        worker = default_worker(eng)
        assert worker.runner.cpu_kernels and worker.kv_cache.keys[0].dtype == torch.bfloat16
        attention = worker.model.model.layers[0].self_attn
        assert attention.forward.kernel is cpu_ops.rope_and_cache
        decoder = CpuDecoder.build(worker.model, worker.kv_cache) if mode == "one-call" else None
        if decoder is not None:
            decoder.max_rows = 8
        worker.runner.cpu_decoder = decoder
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
        for prompt in PROMPTS:
            ids = tok.encode(prompt, add_special_tokens=False)
            done = await eng.complete(prompt, max_tokens=16, temperature=0, ignore_eos=True)
            got = done.choices[0].token_ids
            # In bfloat16 two summation orders round apart, and the model's own incremental generate and
            # its forward over the whole sequence already pick different tokens some steps on.  So each
            # token must be the one the model's forward picks after the same tokens, within one rounding.
            with torch.inference_mode():
                logits = model(torch.tensor([ids + got])).logits[0, len(ids) - 1 : -1].float()  # [16, vocab]
            best = logits.max(-1).values
            chosen = logits[torch.arange(len(got)), torch.tensor(got)]
            assert bool((best - chosen <= torch.finfo(torch.bfloat16).eps * best.abs()).all()), prompt
    finally:
        eng.shutdown()
