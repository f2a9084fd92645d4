"""A loaded generative model made ready to serve: its facts read, its modules patched, its cache and runner made."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..attention.kv_cache import KVCache
from ..config import ModelConfig
from ..patching.apply import patch_model
from .attention_features import read_variants
from .cuda_decoder import CudaDecoder
from .footprint import weight_bytes
from .kv_sizing import build_kv_cache
from .loader import LoadedModel
from .properties import ModelProperties
from .runner import ModelRunner

logger = logging.getLogger("llm_middleware")


@dataclass
class ServingModel:
    """What a generation worker runs: the patched model's facts, its weights' size, its KV cache and runner."""

    props: ModelProperties
    weight_bytes: int
    kv_cache: KVCache
    runner: ModelRunner


def prepare(loaded: LoadedModel, config: ModelConfig) -> ServingModel:
    """Read, patch and equip ``loaded.model`` for serving under ``config`` (in place)."""
    model = loaded.model
    props = ModelProperties.read(model, loaded.tokenizer, config, loaded.device)
    # Before anything is swapped: the model's own attention modules say what they need (or refuse it).
    variants = read_variants(model)
    # Before the cache is sized: merging projections copies one layer's weights at a time.
    patch_model(model, variants)
    weights = weight_bytes(model)
    kv_cache = build_kv_cache(props, config)
    decoder = None
    if loaded.device.type == "cuda" and len(set(props.layer_devices)) == 1:  # graphs need one device
        decoder = CudaDecoder(model, kv_cache, max_batch_size=config.max_batch_size,
                              max_model_len=props.max_model_len, pad_id=props.pad_id, use_graphs=config.cuda_graphs,
                              compile_model=config.compile)
    runner = ModelRunner(model, kv_cache, props.pad_id, decoder)
    if loaded.device.type == "cpu" and (rows := runner.use_cpu_decoder(config.max_batch_size)):
        logger.info("CPU decode steps of up to %d rows run as one call", rows)
    return ServingModel(props, weights, kv_cache, runner)
