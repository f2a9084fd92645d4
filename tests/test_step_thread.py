"""CPU workers end their threads when idle (each such thread holds an OpenMP pool) and start again on demand."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from llm_middleware.engine import Engine
from llm_middleware.engine.workers import step_thread
from llm_middleware.engine.workers.step_thread import StepThread


def _worker_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("llm-engine-", "llm-embed-"))]


def _wait_for_no_worker_threads(timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while _worker_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    return _worker_threads()


def test_idle_cpu_workers_end_their_threads_and_serve_again(
    tiny_model_dir: Path, minilm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A chat model beside an idle embedding model ran its decode steps 2x slower while the
    # embedding worker's thread (and its OpenMP pool) lived on.
    monkeypatch.setattr(step_thread, "IDLE_EXIT_S", 0.1)
    monkeypatch.setattr("llm_middleware.engine.workers.generation.IDLE_EXIT_S", 0.1)
    monkeypatch.setattr("llm_middleware.engine.workers.embedding.IDLE_EXIT_S", 0.1)
    engine = Engine(tiny_model_dir, name="chat", seed=0, max_model_len=256)
    engine.add_model(minilm_dir, name="emb", task="embed")
    try:
        engine.wait_ready_sync()
        for _ in range(2):  # the second round runs on threads started anew
            done = engine.complete_sync([5, 6, 7], model="chat", max_tokens=4, ignore_eos=True, temperature=0)
            assert done.usage.completion_tokens == 4
            assert len(engine.embed_sync(["hello"], model="emb").vectors) == 1
            assert _wait_for_no_worker_threads(5.0) == []
    finally:
        began = time.monotonic()
        engine.shutdown()
    assert time.monotonic() - began < 5  # stopping an ended loop does not wait for it


def test_a_loop_without_an_idle_limit_keeps_its_thread() -> None:
    wake = threading.Condition()
    ended = threading.Event()
    stop = [False]

    def loop() -> None:
        with wake:
            runner.wait(wake, lambda: stop[0])
        ended.set()

    runner = StepThread("llm-engine-test", None)
    with wake:
        runner.ensure_running(loop)
    assert not ended.wait(0.2)
    with wake:
        stop[0] = True
        wake.notify()
    runner.join(5)
    assert ended.is_set()


def test_work_arriving_after_the_idle_exit_starts_a_new_thread() -> None:
    wake = threading.Condition()
    jobs: list[int] = []
    done: list[int] = []
    starts: list[int] = []

    def loop() -> None:
        starts.append(len(done))
        while True:
            with wake:
                if not runner.wait(wake, lambda: bool(jobs)):
                    return
                job = jobs.pop()
            done.append(job)

    runner = StepThread("llm-engine-test", 0.05)
    for job in (1, 2):
        with wake:
            jobs.append(job)
            runner.ensure_running(loop)
            wake.notify()
        assert _wait_for_no_worker_threads(5.0) == []
    assert done == [1, 2] and starts == [0, 1]


def test_a_stopped_worker_is_freed_without_a_garbage_collection(tiny_model_dir: Path) -> None:
    # The engine freezes its startup objects out of garbage collection, so a worker tied into a
    # reference cycle (by its thread keeping the loop) kept its model and KV cache after
    # shutdown: on a GPU the next engine ran out of memory.
    import gc
    import weakref

    from engine_state import default_worker

    engine = Engine(tiny_model_dir, seed=0, max_model_len=256)
    engine.wait_ready_sync()
    engine.complete_sync([5, 6, 7], max_tokens=2, ignore_eos=True, temperature=0)
    worker = weakref.ref(default_worker(engine))
    engine.shutdown()
    gc.disable()
    try:
        del engine
        assert worker() is None
    finally:
        gc.enable()
