"""Waiting for an engine to finish its work, for tests that compare its counts before and after."""

from __future__ import annotations

import asyncio

from llm_middleware.engine import Engine


async def idle_stats(engine: Engine, timeout: float) -> dict[str, int]:
    """The engine's stats once nothing runs or waits (or as they are after ``timeout`` seconds)."""
    for _ in range(int(timeout / 0.02)):
        stats = engine.stats()
        if stats["running"] == 0 and stats["waiting"] == 0:
            break
        await asyncio.sleep(0.02)
    return engine.stats()
