"""Test helpers over an engine's state: waiting until it is idle, reaching its default model's worker,
watching its steps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from llm_middleware.engine import Engine

T = TypeVar("T")


async def idle_stats(engine: Engine, timeout: float) -> dict[str, int]:
    """The engine's stats once nothing runs or waits (or as they are after ``timeout`` seconds)."""
    for _ in range(int(timeout / 0.02)):
        stats = engine.stats()
        if stats["running"] == 0 and stats["waiting"] == 0:
            break
        await asyncio.sleep(0.02)
    return engine.stats()


def kv_accounting(stats: dict[str, int]) -> dict[str, int]:
    """The counts that must return to where they were once the engine is idle again: sequences and KV
    blocks (blocks holding a cached prefix but no sequence count as free)."""
    return {name: stats[name] for name in ("running", "waiting", "free_kv_blocks", "total_kv_blocks")}


def default_worker(engine: Engine) -> Any:
    """The generation worker behind ``engine``'s default model (tests reach into its state)."""
    return engine._models[engine.resolve_model(None)].worker  # noqa: SLF001


def first_step(engine: Engine, measure: Callable[[Any], T]) -> list[T]:
    """A list that receives ``measure(batch)`` of the first step the default worker launches."""
    seen: list[T] = []
    default_worker(engine).before_step = lambda batch: seen.append(measure(batch)) if not seen else None
    return seen


class StepLog:
    """What a worker did, in order: the requests in each step it launched, and each abort as asked.

    A context manager: inside, it is the worker's ``before_step`` and wraps its ``abort``.  A
    cancellation works when the request is in no step launched after the one under way when it
    was aborted, whatever the machine's speed; :meth:`steps_after_abort` counts those steps.
    """

    def __init__(self, worker: Any) -> None:
        self.events: list[tuple[str, frozenset[str]]] = []
        self._worker = worker

    def __enter__(self) -> StepLog:
        abort = type(self._worker).abort

        def logged_abort(request: Any) -> None:
            self.events.append(("abort", frozenset({request.request_id})))
            abort(self._worker, request)

        self._worker.abort = logged_abort
        self._worker.before_step = lambda batch: self.events.append(("step", frozenset(
            [s.request.request_id for s in batch.decode] + [s.request.request_id for s, _ in batch.prefill])))
        return self

    def __exit__(self, *exc: object) -> None:
        del self._worker.abort
        self._worker.before_step = None

    def steps_with(self, request_id: str) -> int:
        """Steps launched with ``request_id`` in them."""
        return sum(kind == "step" and request_id in ids for kind, ids in self.events)

    def steps_after_abort(self, request_id: str) -> int | None:
        """Steps with ``request_id`` launched after its abort (the one under way may count); None if never aborted."""
        aborts = [i for i, (kind, ids) in enumerate(self.events) if kind == "abort" and request_id in ids]
        if not aborts:
            return None
        return sum(kind == "step" and request_id in ids for kind, ids in self.events[aborts[0] + 1 :])
