"""Embedding models: mean pooling as the model's own config says, normalized, batched across requests."""

from __future__ import annotations

import json
import logging
from collections import deque
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import ContextLengthExceededError, EngineNotReadyError, EngineOverloadedError, InvalidRequestError
from ..config import ModelConfig
from ..delivery import AsyncSink, Outbox
from ..model.footprint import weight_bytes
from ..model.loader import LoadedModel
from ..scheduling.intake import Intake
from .step_thread import IDLE_EXIT_S, StepWorker

logger = logging.getLogger("llm_middleware")


class EmbeddingJob:
    __slots__ = ("texts", "dimensions", "sink")

    def __init__(self, texts: list[str], dimensions: int | None, sink: AsyncSink) -> None:
        self.texts = texts
        self.dimensions = dimensions
        self.sink = sink


class EmbeddingWorker(StepWorker):
    """A thread that embeds queued texts in batches of up to ``max_batch_size``."""

    def __init__(self, name: str, loaded: LoadedModel, config: ModelConfig, source: str) -> None:
        super().__init__(f"llm-embed-{name}", IDLE_EXIT_S if loaded.device.type == "cpu" else None)
        self.name = name
        self.model = loaded.model
        self.weight_bytes = weight_bytes(self.model)
        self.tokenizer = loaded.tokenizer
        self.config = config
        # len() of a large tokenizer rebuilds its vocabulary (milliseconds): once, not per request.
        self.vocab_size = len(self.tokenizer)
        self.device = loaded.device
        self.pooling, self.normalize = _pooling_config(Path(source))
        model_limit = getattr(self.model.config, "max_position_embeddings", 512)
        tok_limit = getattr(self.tokenizer, "model_max_length", model_limit) or model_limit
        self.max_model_len = min(model_limit, tok_limit, config.max_model_len or model_limit)
        self.dimension = int(self.model.config.hidden_size)
        self._jobs: deque[EmbeddingJob] = deque()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True)

    def submit(self, texts: list[str], dimensions: int | None, sink: AsyncSink) -> None:
        if not texts:
            raise InvalidRequestError("'input' must contain at least one string", param="input")
        if dimensions is not None and not (1 <= dimensions <= self.dimension):
            raise InvalidRequestError(
                f"'dimensions' must be between 1 and {self.dimension} for model {self.name!r}, got {dimensions}",
                param="dimensions",
            )
        with self._wake:
            self._refuse_if_stopping()
            if len(self._jobs) >= self.config.max_waiting:
                raise EngineOverloadedError(f"model {self.name!r} has too many embedding requests waiting", retry_after=1)
            self._jobs.append(EmbeddingJob(texts, dimensions, sink))
            self._wake_loop()
        Intake.submitted()

    def stats(self) -> dict[str, int]:
        return {"running": 0, "waiting": len(self._jobs), "free_kv_blocks": 0, "total_kv_blocks": 0,
                "weight_bytes": self.weight_bytes, "kv_cache_bytes": 0}

    def _loop(self) -> None:
        while True:
            with self._wake:
                if not self._thread.wait(self._wake, lambda: bool(self._stopping or self._jobs)):
                    return  # idle: the thread ends until the next request
                if self._stopping:
                    jobs = list(self._jobs)
                    self._jobs.clear()
                    outbox = Outbox()
                    for job in jobs:
                        outbox.put(job.sink, EngineNotReadyError("the engine shut down", retry_after=5))
                    outbox.flush()
                    return
                jobs = []
                count = 0
                while self._jobs and (not jobs or count + len(self._jobs[0].texts) <= self.config.max_batch_size):
                    job = self._jobs.popleft()
                    jobs.append(job)
                    count += len(job.texts)
            self._run(jobs)

    def _too_long(self, job: EmbeddingJob) -> ContextLengthExceededError | None:
        # Tokenized here, on the worker thread, so that callers' event loops never block on it.
        for i, ids in enumerate(self.tokenizer(job.texts, add_special_tokens=True)["input_ids"]):
            if len(ids) > self.max_model_len:
                return ContextLengthExceededError(
                    f"input {i} has {len(ids)} tokens; model {self.name!r} accepts at most {self.max_model_len}",
                    param="input",
                )
        return None

    def _run(self, jobs: list[EmbeddingJob]) -> None:
        outbox = Outbox()
        try:
            accepted = []
            for job in jobs:
                error = self._too_long(job)
                if error is None:
                    accepted.append(job)
                else:
                    outbox.put(job.sink, error)
            texts = [t for job in accepted for t in job.texts]
            size = self.config.max_batch_size
            parts = [self.embed_batch(texts[i : i + size]) for i in range(0, len(texts), size)]
            vectors = torch.cat([p[0] for p in parts]) if parts else torch.empty(0)
            tokens = [n for p in parts for n in p[1]]
            offset = 0
            for job in accepted:
                part = vectors[offset : offset + len(job.texts)]
                used = sum(tokens[offset : offset + len(job.texts)])
                offset += len(job.texts)
                if job.dimensions is not None:
                    part = part[:, : job.dimensions]
                    if self.normalize:
                        part = F.normalize(part, dim=-1)
                outbox.put(job.sink, (part.tolist(), used))
        except Exception as exc:
            logger.exception("embedding batch failed")
            for job in jobs:
                outbox.put(job.sink, exc)
        outbox.flush()

    @torch.inference_mode()
    def embed_batch(self, texts: list[str]) -> tuple[torch.Tensor, list[int]]:
        """Embed ``texts`` in one forward pass; returns vectors ``[N, dim]`` and token counts."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_model_len, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        hidden = self.model(**enc).last_hidden_state  # [N, T, H]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [N, T, 1]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, float("-inf")).max(dim=1).values
        else:
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        pooled = pooled.float()
        if self.normalize:
            pooled = F.normalize(pooled, dim=-1)
        return pooled.cpu(), enc["attention_mask"].sum(dim=1).tolist()


def _pooling_config(path: Path) -> tuple[str, bool]:
    """Pooling mode and normalization from a sentence-transformers folder; mean + normalize otherwise."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return "mean", True
    modules: list[dict[str, Any]] = json.loads(modules_file.read_text())
    pooling, normalize = "mean", False
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            cfg_file = path / module.get("path", "") / "config.json"
            if cfg_file.is_file():
                cfg = json.loads(cfg_file.read_text())
                if cfg.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif cfg.get("pooling_mode_max_tokens"):
                    pooling = "max"
        elif kind.endswith("Normalize"):
            normalize = True
    return pooling, normalize
