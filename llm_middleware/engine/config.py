"""Per-model engine settings, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InvalidRequestError


@dataclass(frozen=True)
class ModelConfig:
    """How one model is loaded and batched.  Every field is an ``Engine``/``add_model`` keyword."""

    task: Literal["auto", "generate", "embed"] = "auto"
    quantize: Literal["4bit", "8bit", "nf4"] | None = None
    dtype: str = "auto"
    device: str = "auto"
    device_map: str | dict[str, Any] | None = None
    max_batch_size: int = 32
    max_waiting: int = 256
    max_model_len: int | None = None
    block_size: int = 16
    max_prefill_tokens: int | None = None
    kv_cache_blocks: int | None = None
    kv_cache_memory_fraction: float = 0.85
    cpu_kv_cache_bytes: int = 4 * 2**30
    trust_remote_code: bool = False
    cuda_graphs: bool = True
    compile: bool = False
    async_scheduling: bool | None = None
    burst_window_ms: float = 2.0
    prefix_caching: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.task in ("auto", "generate", "embed"), "task", "must be 'auto', 'generate' or 'embed'"),
            (self.quantize in (None, "4bit", "8bit", "nf4"), "quantize", "must be None, '4bit', '8bit' or 'nf4'"),
            (self.max_batch_size >= 1, "max_batch_size", "must be at least 1"),
            (self.max_waiting >= 0, "max_waiting", "must be >= 0"),
            (self.max_model_len is None or self.max_model_len >= 2, "max_model_len", "must be at least 2"),
            (self.block_size >= 1, "block_size", "must be at least 1"),
            (self.max_prefill_tokens is None or self.max_prefill_tokens >= 1, "max_prefill_tokens", "must be at least 1"),
            (self.kv_cache_blocks is None or self.kv_cache_blocks >= 1, "kv_cache_blocks", "must be at least 1"),
            (0 < self.kv_cache_memory_fraction <= 1, "kv_cache_memory_fraction", "must be in (0, 1]"),
            (0 <= self.burst_window_ms <= 1000, "burst_window_ms", "must be in [0, 1000]"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise InvalidRequestError(f"{name} {why}, got {getattr(self, name)!r}", param=name)
