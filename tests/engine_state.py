"""Test helpers over an engine's state: waiting until it is idle, reaching its default model's worker."""

from __future__ import annotations

import asyncio
from typing import Any

from llm_middleware.engine import Engine


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
