"""Test helpers over an engine's state: waiting until it is idle, reaching its default model's worker, watching its first step."""

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


def default_worker(engine: Engine) -> Any:
    """The generation worker behind ``engine``'s default model (tests reach into its state)."""
    return engine._models[engine.resolve_model(None)].worker  # noqa: SLF001


def first_step(engine: Engine, measure: Callable[[Any], T]) -> list[T]:
    """A list that receives ``measure(batch)`` of the first step the default worker launches."""
    seen: list[T] = []
    default_worker(engine).before_step = lambda batch: seen.append(measure(batch)) if not seen else None
    return seen
