"""``/stats`` of the test servers: an engine's live counts, and the steps its default model launched,
so that a test can watch a request leave the batch before it could have finished."""

from __future__ import annotations

from typing import Any

from engine_state import default_worker

from llm_middleware.engine import Engine


class Stats:
    """``engine.stats()``, with ``steps``: how many steps the engine's default model has launched since
    the first call that found it loaded."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.steps = 0

    def __call__(self) -> dict[str, int]:
        worker = default_worker(self.engine)
        if worker is not None and getattr(worker, "before_step", False) is None:  # embedding workers take no steps
            worker.before_step = self._count
        return {**self.engine.stats(), "steps": self.steps}

    def _count(self, batch: Any) -> None:
        self.steps += 1
