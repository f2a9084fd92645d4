"""Prefix caching: cached blocks give the output computing them would, and the block accounting stays exact."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_state import default_worker, idle_stats
from servers import Server, server_env, serving

from llm_middleware.engine import Engine
from llm_middleware.errors import EngineNotReadyError
from llm_middleware.engine.sampling_params import SamplingParams
from llm_middleware.engine.scheduling import prefix_hash
from llm_middleware.engine.scheduling.block_manager import BlockManager
from llm_middleware.engine.scheduling.request import GenerationRequest
from llm_middleware.engine.scheduling.scheduler import Scheduler
from llm_middleware.engine.scheduling.sequence import PENDING_TOKEN, Sequence

BLOCK = 4
NEW_TOKENS = 12
#: Each engine here computes prompts in chunks of 6 tokens: chunks start in the middle of blocks.
OPTIONS: dict[str, Any] = dict(block_size=BLOCK, max_prefill_tokens=6, max_batch_size=8, seed=0)


def tokens(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(20, 500) for _ in range(n)]


#: The prompt that runs first; the cases below share some of it.
FIRST = tokens(1, 21)
#: Each case: a prompt and how many of its tokens come from the cache once ``FIRST`` ran.
CASES = {
    "shares_nothing": (tokens(2, 21), 0),
    "shares_part_of_a_block": (FIRST[:2] + tokens(3, 19), 0),
    "shares_exact_blocks": (FIRST[:12] + tokens(4, 9), 12),
    "is_the_whole_prompt": (FIRST, 20),
    "is_the_prompt_to_a_block_boundary": (FIRST[:20], 16),  # its last block is computed again
    "has_a_block_seen_later_in_another": (FIRST[:4] + FIRST[8:12] + tokens(6, 5), 4),
}


def block_invariants(blocks: BlockManager, held: list[Sequence] = ()) -> None:
    """Every block is held or free exactly once, each held block counts its holders, and the cache's index
    names the blocks that hold its contents."""
    refs = [0] * blocks.num_blocks
    for seq in held:
        for block in seq.block_table:
            refs[block] += 1
    assert blocks._refs == refs  # noqa: SLF001
    free = list(blocks._free) + list(blocks._evictable)  # noqa: SLF001
    assert sorted(free) == [b for b in range(blocks.num_blocks) if refs[b] == 0]
    assert all(blocks._hash_of[b] is not None for b in blocks._evictable)  # noqa: SLF001
    assert {h: b for b, h in enumerate(blocks._hash_of) if h is not None} == blocks._cached  # noqa: SLF001
    if not held:
        assert not blocks._filling  # noqa: SLF001


def engine_blocks(engine: Engine) -> BlockManager:
    return default_worker(engine).blocks


async def complete(engine: Engine, prompt: list[int], **options: Any) -> Any:
    options = {"max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True, **options}
    return await engine.complete(prompt, **options)


@pytest.fixture(scope="module")
def uncached(tiny_model_dir: Path) -> Iterator[Engine]:
    """The reference: the same engine settings without prefix caching."""
    engine = Engine(tiny_model_dir, prefix_caching=False, **OPTIONS)
    engine.wait_ready_sync()
    yield engine
    engine.shutdown()


@pytest.fixture
def cached_engine(tiny_model_dir: Path, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A fresh engine with prefix caching (``overlap``: async scheduling, ``overlap-prompts``: prompt chunks too)."""
    mode = getattr(request, "param", "sync")
    engine = Engine(tiny_model_dir, async_scheduling=mode != "sync", **OPTIONS)
    engine.wait_ready_sync()
    default_worker(engine).pipelining.prompts = mode == "overlap-prompts"
    yield engine
    engine.shutdown()


MODES = pytest.mark.parametrize("cached_engine", ["sync", "overlap", "overlap-prompts"], indirect=True)


async def greedy_cases(cached: Engine, uncached: Engine) -> dict[str, int]:
    """Run ``FIRST``, then each case, on both engines; assert equal greedy output; return each case's cached tokens."""
    assert (await complete(cached, FIRST)).usage.cached_tokens == 0
    found = {}
    for name, (prompt, _) in CASES.items():
        got, want = await complete(cached, prompt), await complete(uncached, prompt)
        assert got.choices[0].token_ids == want.choices[0].token_ids, name
        found[name] = got.usage.cached_tokens
        assert want.usage.cached_tokens == 0
    return found


@MODES
async def test_greedy_output_with_the_cache_equals_output_without(cached_engine: Engine, uncached: Engine) -> None:
    found = await greedy_cases(cached_engine, uncached)
    assert found == {name: cached for name, (_, cached) in CASES.items()}
    stats = await idle_stats(cached_engine, timeout=30)
    assert stats["free_kv_blocks"] == stats["total_kv_blocks"]
    block_invariants(engine_blocks(cached_engine))


async def test_a_broken_hash_chain_fails_the_equality_check(cached_engine: Engine, uncached: Engine,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Hashed without its predecessors, a block of one prompt matches the same tokens at another place
    # in another: the check above must catch the wrong keys and values it would hand out.
    monkeypatch.setattr(prefix_hash, "block_hash", lambda parent, tokens: prefix_hash.root(str(tokens).encode()))
    with pytest.raises(AssertionError, match="has_a_block_seen_later_in_another"):
        await greedy_cases(cached_engine, uncached)


async def concurrent_prompts(cached: Engine, uncached: Engine) -> None:
    """Prompts sharing prefixes sent at once: the same greedy output, some of it from blocks computed for others."""
    prompts = [FIRST] + [prompt for prompt, _ in CASES.values()] + [FIRST[:12] + tokens(7, 3)]

    async def outputs(engine: Engine) -> list[list[int]]:
        done = await asyncio.gather(*(complete(engine, p) for p in prompts))
        return [d.choices[0].token_ids for d in done]

    assert await outputs(cached) == await outputs(uncached)
    assert cached.stats()["cached_prompt_tokens"] > 0  # some started from blocks computed for others
    await idle_stats(cached, timeout=30)
    block_invariants(engine_blocks(cached))


@MODES
async def test_prompts_sharing_a_prefix_at_once_equal_output_without_the_cache(cached_engine: Engine,
                                                                                uncached: Engine) -> None:
    await concurrent_prompts(cached_engine, uncached)


@MODES
async def test_choices_of_one_request_share_its_prompt(cached_engine: Engine, uncached: Engine) -> None:
    prompt = tokens(8, 18)
    got = await complete(cached_engine, prompt, n=3)
    want = await complete(uncached, prompt)
    assert [c.token_ids for c in got.choices] == [want.choices[0].token_ids] * 3
    # The first choice computes the prompt; the others wait for its blocks and take them.
    stats = cached_engine.stats()
    assert stats["cached_prompt_tokens"] == 2 * 16
    assert stats["computed_prompt_tokens"] == 18 + 2 * 2
    assert got.usage.cached_tokens == 0 and got.usage.prompt_tokens == 18


async def seeded_sampling(cached: Engine, uncached: Engine) -> None:
    """Seeded draws are the same whether a prompt comes from the cache (in part or whole) or not."""
    prompt = FIRST[:12] + tokens(9, 6)
    sampled = dict(temperature=1.0, seed=1234, n=2)
    await complete(cached, FIRST)
    first = await complete(cached, prompt, **sampled)
    again = await complete(cached, prompt, **sampled)  # now its whole prompt is cached
    plain = await complete(uncached, prompt, **sampled)
    assert (first.usage.cached_tokens, again.usage.cached_tokens) == (12, 16)
    assert [c.token_ids for c in first.choices] == [c.token_ids for c in plain.choices]
    assert [c.token_ids for c in again.choices] == [c.token_ids for c in plain.choices]
    assert first.choices[0].token_ids != first.choices[1].token_ids


@MODES
async def test_seeded_sampling_is_reproducible_with_and_without_the_cache(cached_engine: Engine,
                                                                           uncached: Engine) -> None:
    await seeded_sampling(cached_engine, uncached)


async def test_a_conversation_resent_takes_the_answer_from_the_cache(cached_engine: Engine, uncached: Engine) -> None:
    # The next turn re-sends the prompt and the answer: the answer's full blocks were cached as it decoded.
    answer = (await complete(cached_engine, FIRST)).choices[0].token_ids
    turn = FIRST + answer + tokens(10, 3)
    got, want = await complete(cached_engine, turn), await complete(uncached, turn)
    assert got.choices[0].token_ids == want.choices[0].token_ids
    computed = len(FIRST) + NEW_TOKENS - 1  # the last answer token was drawn, never computed
    assert got.usage.cached_tokens == computed // BLOCK * BLOCK


@pytest.mark.parametrize("arch", ["mistral", "gemma3"])
async def test_sliding_window_models_keep_their_output(arch: str, arch_model_dir: Any) -> None:
    # The windows (16 tokens) are shorter than the cached prefix: which cached keys a query sees matters.
    model = arch_model_dir(arch)
    prompt = tokens(11, 40)
    outputs = []
    for caching in (True, False):
        engine = Engine(model, prefix_caching=caching, **OPTIONS)
        try:
            await engine.wait_ready()
            await complete(engine, prompt[:36] + tokens(12, 4))
            done = await complete(engine, prompt)
            assert done.usage.cached_tokens == (36 if caching else 0)
            outputs.append(done.choices[0].token_ids)
        finally:
            engine.shutdown()
    assert outputs[0] == outputs[1]


def test_least_recently_used_prefix_is_evicted_when_free_blocks_run_out(tiny_model_dir: Path) -> None:
    # 12 blocks: a 21-token prompt and 3 tokens of answer fill 6, all cached once the request ends.
    engine = Engine(tiny_model_dir, kv_cache_blocks=12, max_model_len=40, **OPTIONS)
    try:
        engine.wait_ready_sync()
        a, b, c = FIRST, tokens(13, 21), tokens(14, 21)

        def cached_tokens(prompt: list[int]) -> int:
            done = engine.complete_sync(prompt, max_tokens=4, temperature=0, ignore_eos=True)
            stats = engine.stats()
            assert stats["free_kv_blocks"] == stats["total_kv_blocks"] == 12
            return done.usage.cached_tokens

        assert [cached_tokens(p) for p in (a, b)] == [0, 0]  # b took never-cached blocks: a stays
        assert engine.stats()["cached_kv_blocks"] == 12
        assert cached_tokens(a) == 20  # a is now used more recently than b
        assert cached_tokens(c) == 0  # c needed blocks: b's went
        assert [cached_tokens(p) for p in (a, c)] == [20, 20]
        assert cached_tokens(b) == 0
        block_invariants(engine_blocks(engine))
    finally:
        engine.shutdown()


def preemption_and_cancellation(engine: Engine, uncached: Engine) -> None:
    """On an engine of 10 blocks of 4 slots (``max_model_len`` 32): three 30-token sequences sharing a prompt
    cannot all fit, so some are preempted (and recomputed from the cache); a fourth is cancelled mid-stream.
    The outputs are those computed without the cache, and every block ends free."""
    prompt = tokens(15, 10)
    prompts = [prompt, prompt + tokens(16, 2), prompt[:8] + tokens(17, 3)]
    want = [uncached.complete_sync(p, max_tokens=18, temperature=0, ignore_eos=True).choices[0].token_ids
            for p in prompts]
    worker = default_worker(engine)
    preempted: list[int] = []
    seen: list[Sequence] = []
    all_in = threading.Event()

    def before_step(batch: Any) -> None:
        all_in.wait(30)
        preempted.extend(s.seq_id for s in batch.preempted)
        seen.extend(s for s in (*batch.decode, *(s for s, _ in batch.prefill)) if s not in seen)

    worker.before_step = before_step
    results: list[Any] = [None] * len(prompts)

    def run(i: int) -> None:
        results[i] = engine.complete_sync(prompts[i], max_tokens=18, temperature=0, ignore_eos=True)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    stream = engine.stream_complete_sync(prompt + tokens(18, 1), ignore_eos=True, temperature=0)
    while engine.stats()["running"] + engine.stats()["waiting"] < 4:
        time.sleep(0.005)
    all_in.set()
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    for t in threads:
        t.join(timeout=120)
    assert preempted
    assert [r.choices[0].token_ids for r in results] == want
    deadline = time.monotonic() + 30
    while engine.stats()["running"] + engine.stats()["waiting"] and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = engine.stats()
    assert stats["free_kv_blocks"] == stats["total_kv_blocks"] == 10
    block_invariants(engine_blocks(engine))
    assert all(not s.block_table for s in seen)


def test_preemption_and_cancellation_keep_the_counts_exact(tiny_model_dir: Path, uncached: Engine) -> None:
    engine = Engine(tiny_model_dir, kv_cache_blocks=10, max_model_len=32, **OPTIONS)
    try:
        engine.wait_ready_sync()
        preemption_and_cancellation(engine, uncached)
    finally:
        engine.shutdown()


def shutdown_releases_every_block(engine: Engine) -> None:
    """Shut ``engine`` down while three requests sharing a prompt decode: each ends with an error, and no
    block stays held."""
    blocks = engine_blocks(engine)
    decoding, hold = threading.Event(), threading.Event()

    def before_step(batch: Any) -> None:
        if len(batch.decode) == 3:  # all three past their prompts: hold the step until the shutdown begins
            decoding.set()
            hold.wait(30)

    default_worker(engine).before_step = before_step
    prompt = tokens(19, 10)
    errors: list[Exception] = []

    def run(i: int) -> None:
        try:
            engine.complete_sync(prompt + tokens(20 + i, 3), max_tokens=60, ignore_eos=True, temperature=0)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    assert decoding.wait(60)
    assert blocks.num_free < blocks.num_blocks and engine.stats()["cached_prompt_tokens"] > 0
    hold.set()
    engine.shutdown()
    for t in threads:
        t.join(timeout=60)
    assert len(errors) == 3 and all(isinstance(e, EngineNotReadyError) for e in errors)
    assert blocks.num_free == blocks.num_blocks
    block_invariants(blocks)


def test_shutdown_releases_every_block(tiny_model_dir: Path) -> None:
    engine = Engine(tiny_model_dir, **OPTIONS)
    try:
        engine.wait_ready_sync()
        shutdown_releases_every_block(engine)
    finally:
        engine.shutdown()


def test_prefix_caching_off_caches_nothing(uncached: Engine) -> None:
    for _ in range(2):
        done = uncached.complete_sync(FIRST, max_tokens=2, temperature=0)
        assert done.usage.cached_tokens == 0
    stats = uncached.stats()
    assert stats["cached_kv_blocks"] == 0 and stats["cached_prompt_tokens"] == 0
    assert stats["computed_prompt_tokens"] >= 2 * len(FIRST)


def test_openai_sdk_reads_the_cached_prompt_tokens(tiny_model_dir: Path) -> None:
    # A real server on loopback: chat and completions, whole and streamed, fill ``prompt_tokens_details``.
    import openai  # imported here: the CUDA tests import this module where the SDK need not be installed

    with serving({"api": Server(["-m", "hypercorn", "server_apps:raw_asgi"])},
                 {**server_env(tiny_model_dir), "OMP_NUM_THREADS": "1"}) as urls:
        client = openai.OpenAI(base_url=urls["api"] + "/ai/v1", api_key="unused", max_retries=0, timeout=60)
        model = tiny_model_dir.name
        system = {"role": "system", "content": "Answer as the shop's assistant, briefly and politely. " * 3}
        greedy: dict[str, Any] = {"model": model, "max_tokens": 2, "temperature": 0}

        def chat(question: str, **extra: Any) -> Any:
            messages = [system, {"role": "user", "content": question}]
            answer = client.chat.completions.create(messages=messages, **greedy, **extra)  # type: ignore[arg-type]
            return list(answer)[-1].usage if extra.get("stream") else answer.usage

        first, second = chat("Is the lamp in stock?"), chat("Is the chair in stock?")
        assert first.prompt_tokens_details.cached_tokens == 0
        assert 0 < second.prompt_tokens_details.cached_tokens < second.prompt_tokens
        streamed = chat("Is the chair in stock?", stream=True, stream_options={"include_usage": True})
        # The whole prompt was computed before: all of it but its last block comes from the cache.
        assert streamed.prompt_tokens_details.cached_tokens == (streamed.prompt_tokens - 1) // 16 * 16

        prompt = "Once upon a time in a small shop there was a lamp. " * 3
        plain = client.completions.create(prompt=prompt, **greedy)
        again = list(client.completions.create(prompt=prompt, stream=True, stream_options={"include_usage": True},
                                               **greedy))[-1]
        assert plain.usage.prompt_tokens_details.cached_tokens == 0
        assert again.usage.prompt_tokens_details.cached_tokens == (again.usage.prompt_tokens - 1) // 16 * 16 > 0


# ---- the block manager and scheduler alone ----------------------------------------------------


def sequence(prompt: list[int], salt: bytes = b"", block_size: int = BLOCK) -> Sequence:
    request = GenerationRequest("r", prompt, SamplingParams(), sink=None)  # type: ignore[arg-type]
    request.prefix_root = prefix_hash.root(b"model", salt) if salt else prefix_hash.root(b"model")
    request.prompt_hashes = prefix_hash.chain(request.prefix_root, prompt, block_size)
    seq = Sequence(request, 0, prompt, request.params, None, None, len(prompt) + 8,  # type: ignore[arg-type]
                   block_hashes=request.prompt_hashes)
    request.seqs.append(seq)
    return seq


def run_prompt(scheduler: Scheduler, seq: Sequence) -> None:
    """Schedule and 'launch' steps until ``seq`` has computed its prompt."""
    scheduler.add(seq)
    while seq.num_uncomputed > 0:
        batch = scheduler.schedule()
        scheduler.launched(batch)


def test_hash_chain_names_a_block_by_everything_before_it() -> None:
    start = prefix_hash.root(b"model")
    a = prefix_hash.chain(start, [1, 2, 3, 4, 5, 6, 7, 8, 9], 4)
    assert len(a) == 2  # full blocks only
    assert prefix_hash.chain(start, [1, 2, 3, 4, 5, 6, 7, 8], 4) == a
    assert prefix_hash.chain(start, [0, 2, 3, 4, 5, 6, 7, 8], 4)[1] != a[1]  # a change before changes it
    assert prefix_hash.chain(prefix_hash.root(b"other"), [1, 2, 3, 4], 4)[0] != a[0]
    assert prefix_hash.chain(prefix_hash.root(b"model", b"salt"), [1, 2, 3, 4], 4)[0] != a[0]


def test_blocks_are_shared_read_only_and_released_to_the_cache() -> None:
    blocks = BlockManager(8, BLOCK)
    scheduler = Scheduler(blocks, max_batch_size=4, max_prefill_tokens=64)
    first = sequence(list(range(1, 11)))  # 10 tokens: 2 full blocks and a partial one
    run_prompt(scheduler, first)
    assert first.num_committed_blocks == 2 and blocks.num_cached == 2
    second = sequence(list(range(1, 9)) + [50, 51, 52])
    run_prompt(scheduler, second)
    assert second.num_cached_tokens == 8 and second.block_table[:2] == first.block_table[:2]
    # Every write of the second sequence went past the shared blocks.
    assert second.block_table[2] not in first.block_table
    block_invariants(blocks, [first, second])
    scheduler.remove(first)
    assert blocks.num_free == 8 - 3  # first's own last block came back; the shared ones are still held
    scheduler.remove(second)
    assert blocks.num_free == 8 and blocks.num_cached == 2
    block_invariants(blocks)
    assert (blocks.cached_prompt_tokens, blocks.computed_prompt_tokens) == (8, 10 + 3)


def test_a_different_salt_shares_nothing() -> None:
    blocks = BlockManager(8, BLOCK)
    scheduler = Scheduler(blocks, max_batch_size=4, max_prefill_tokens=64)
    prompt = list(range(1, 11))
    run_prompt(scheduler, sequence(prompt, salt=b"image-1"))
    assert blocks.cached_prefix(sequence(prompt, salt=b"image-2")) == []
    assert len(blocks.cached_prefix(sequence(prompt, salt=b"image-1"))) == 2


def test_output_blocks_are_cached_once_their_tokens_are_read() -> None:
    blocks = BlockManager(8, BLOCK)
    scheduler = Scheduler(blocks, max_batch_size=4, max_prefill_tokens=64)
    seq = sequence([1, 2, 3, 4, 5, 6])
    run_prompt(scheduler, seq)
    assert seq.num_committed_blocks == 1
    seq.token_ids += [7, PENDING_TOKEN]  # a draw read, and one still on the device
    seq.num_computed = 8
    blocks.commit(seq)
    assert seq.num_committed_blocks == 1  # its second block ends in a token not read yet
    seq.token_ids[-1] = 8
    blocks.commit(seq)
    assert seq.num_committed_blocks == 2
    assert seq.block_hashes[1] == prefix_hash.chain(seq.request.prefix_root, list(range(1, 9)), BLOCK)[1]
    scheduler.remove(seq)
    block_invariants(blocks)


def test_eviction_takes_never_cached_blocks_first_then_the_least_recently_released() -> None:
    blocks = BlockManager(6, BLOCK)
    scheduler = Scheduler(blocks, max_batch_size=4, max_prefill_tokens=64)
    old, new = sequence([1, 2, 3, 4, 5]), sequence([9, 8, 7, 6, 5])
    for seq in (old, new):
        run_prompt(scheduler, seq)
        scheduler.remove(seq)
    assert blocks.num_cached == 2 and blocks.num_free == 6
    filler = sequence(list(range(100, 116)) + [1])  # 17 tokens: 5 blocks, the last two cached ones among them
    run_prompt(scheduler, filler)
    assert blocks.cached_prefix(sequence([1, 2, 3, 4, 5])) == []  # evicted first: released first
    assert len(blocks.cached_prefix(sequence([9, 8, 7, 6, 5]))) == 1
    scheduler.remove(filler)
    block_invariants(blocks)


def test_a_sequence_waits_for_the_prefix_block_another_is_computing() -> None:
    blocks = BlockManager(16, BLOCK)
    scheduler = Scheduler(blocks, max_batch_size=4, max_prefill_tokens=64)
    prompt = list(range(1, 14))
    first, second = sequence(prompt), sequence(prompt)
    scheduler.add(first)
    scheduler.add(second)
    batch = scheduler.schedule()
    assert [s for s, _ in batch.prefill] == [first]  # the second would compute the same blocks
    scheduler.launched(batch)
    batch = scheduler.schedule()
    assert batch.prefill == [(second, 1)] and second.num_cached_tokens == 12
    scheduler.launched(batch)
    block_invariants(blocks, [first, second])


def test_preempted_sequence_restarts_from_its_own_cached_blocks() -> None:
    blocks = BlockManager(8, BLOCK)
    scheduler = Scheduler(blocks, max_batch_size=4, max_prefill_tokens=64)
    seq = sequence(list(range(1, 11)))
    run_prompt(scheduler, seq)
    seq.token_ids += [11, 12]  # two tokens drawn and computed
    seq.num_computed += 1
    scheduler._preempt(seq)  # noqa: SLF001
    block_invariants(blocks)
    assert seq.num_committed_blocks == 0 and not seq.block_table
    batch = scheduler.schedule()
    assert batch.prefill == [(seq, 4)]  # 12 tokens: the first 8 from the cache, the last block computed again
    assert seq.num_cached_tokens == 0  # counted once, when it first started
    block_invariants(blocks, [seq])
