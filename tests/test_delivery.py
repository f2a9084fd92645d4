"""Result delivery: a consumer that fell behind takes the deltas queued for a choice as one."""

from __future__ import annotations

import asyncio
from pathlib import Path

from llm_middleware.engine import Engine
from llm_middleware.engine.delivery import AsyncSink, ThreadSink
from llm_middleware.engine.outputs import Delta, TokenLogprob, Usage


def _deltas() -> list[object]:
    return [
        Delta(0, "a", [1], [TokenLogprob(1, "a", -0.5)]),
        Delta(0, "b", [2], [TokenLogprob(2, "b", -0.25)]),
        Delta(1, "x", [7]),  # another choice: not merged into choice 0
        Delta(1, "", [8], finish_reason="length"),
        Delta(0, "c", [3], [TokenLogprob(3, "c", -1.0)], finish_reason="stop", usage=Usage(4, 4)),
        RuntimeError("after the end"),
    ]


def _check(got: list[object]) -> None:
    first, second, third, error = got
    assert (first.index, first.text, first.token_ids) == (0, "ab", [1, 2])
    assert [lp.token_id for lp in first.logprobs] == [1, 2]
    assert (second.index, second.text, second.token_ids, second.finish_reason) == (1, "x", [7, 8], "length")
    assert (third.text, third.finish_reason, third.usage) == ("c", "stop", Usage(4, 4))
    assert isinstance(error, RuntimeError)


async def test_async_sink_merges_queued_deltas_of_one_choice() -> None:
    sink = AsyncSink(asyncio.get_running_loop())
    for item in _deltas():
        sink.queue.put_nowait(item)
    _check([await sink.get() for _ in range(4)])


def test_thread_sink_merges_queued_deltas_of_one_choice() -> None:
    sink = ThreadSink()
    for item in _deltas():
        sink.queue.put(item)
    _check([sink.get() for _ in range(4)])


async def test_a_slow_reader_gets_every_token_in_fewer_deltas(tiny_model_dir: Path) -> None:
    engine = Engine(tiny_model_dir, seed=0)
    await engine.wait_ready()
    try:
        await _slow_reader(engine)
    finally:
        engine.shutdown()


async def _slow_reader(engine: Engine) -> None:
    whole = await engine.complete("Hello there", max_tokens=24, temperature=0, ignore_eos=True)
    stream = engine.stream_complete("Hello there", max_tokens=24, temperature=0, ignore_eos=True)
    first = await anext(stream)
    # The reader looks away until the engine has delivered everything: a request submitted once
    # the stream finished is answered after the stream's last delta reached this loop.
    for _ in range(6000):
        if engine.stats()["running"] == 0:
            break
        await asyncio.sleep(0.01)
    await engine.complete([1, 2, 3], max_tokens=1)
    rest = [d async for d in stream]
    assert len(rest) == 1  # every queued delta of the choice, taken as one
    assert first.text + rest[0].text == whole.text
    assert first.token_ids + rest[0].token_ids == whole.choices[0].token_ids
    assert rest[0].finish_reason == "length" and rest[0].usage.completion_tokens == 24
