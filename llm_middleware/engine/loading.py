"""One model brought up: loaded through ``from_pretrained`` and handed to the worker of its task."""

from __future__ import annotations

import gc
import threading

from .attention.paged import ATTENTION_NAME
from .config import ModelConfig
from .model.loader import LoadCancelledError, LoadedModel, load
from .scheduling.intake import Intake
from .workers.embedding import EmbeddingWorker
from .workers.generation import GenerationWorker

Worker = GenerationWorker | EmbeddingWorker


def load_worker(name: str, source: str, config: ModelConfig, seed: int | None, intake: Intake,
                cancel: threading.Event) -> tuple[Worker, LoadedModel]:
    """The worker serving ``source`` under ``name`` (not started yet), and what was loaded.

    Raises :class:`LoadCancelledError` once ``cancel`` is set, at the next step of the load.
    """
    loaded = load(
        source, task=config.task, quantize=config.quantize, dtype=config.dtype, device=config.device,
        device_map=config.device_map, attn_implementation=ATTENTION_NAME,
        trust_remote_code=config.trust_remote_code, cancel=cancel,
    )
    if cancel.is_set():
        raise LoadCancelledError("the load was abandoned: the engine stopped")
    worker: Worker
    if loaded.task == "embed":
        worker = EmbeddingWorker(name, loaded, config, source)
    else:
        worker = GenerationWorker(name, loaded, config, seed, intake)
    return worker, loaded


def freeze_startup_objects() -> None:
    """Exempt every object alive now (imported libraries, model, tokenizer) from future garbage collections.

    They live as long as the process, yet each full collection would walk all of them with the GIL
    held, stalling every stream and the event loop at once.  Garbage is collected first so that none
    of it is kept.
    """
    gc.collect()
    gc.freeze()


def release_device_memory() -> None:
    """Collect what a stopped or abandoned model left, and return the GPU's cached blocks."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
